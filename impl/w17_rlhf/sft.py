"""Stage 1, the SFT policy: next-token training on (prompt, the book's continuation) windows from training
chapters. A plain loop (AdamW, linear warmup then cosine), a checkpoint every `CHECKPOINT_EVERY` steps so an
interrupted run resumes; the trained policy is saved with save_pretrained in `<run>/model`.

    python -m impl train w17 --profile cpu      # runs this stage first (reused afterwards)
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch

from impl.core.artifacts import RunResult, environment, write_json
from impl.core.hf import device
from impl.w17_rlhf.policy import new_policy

CHECKPOINT_EVERY = 200


def run(spec, prompts, tok, run_dir: Path, progress: bool = False) -> RunResult:
    if (run_dir / "metrics.json").exists():
        return RunResult(run_dir, json.loads((run_dir / "metrics.json").read_text()), reused=True)
    s = spec.sft
    model = new_policy(spec, tok)
    dev = device()
    model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.0, betas=(0.9, 0.95))
    step, log, state = 0, [], None
    ckpt = run_dir / "checkpoint.pt"
    if ckpt.exists():  # resume an interrupted run
        state = torch.load(ckpt, map_location=dev, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, log = state["step"], state.get("log", [])
    # the log as of the checkpoint (empty for a fresh start): rows written after it are for steps that run again
    with open(run_dir / "train_log.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in log)
    rng = random.Random(s.seed * 1_000_003 + step)
    if state is not None and "rng" in state:  # the batch stream where the checkpoint left it: a resumed run
        rng.setstate(state["rng"])  # draws the batches the uninterrupted run would have drawn
    data = torch.tensor(prompts.train)
    start = time.time()
    from tqdm.auto import tqdm

    bar = tqdm(total=s.steps, initial=step, desc="SFT", disable=not progress)
    while step < s.steps:
        lr = s.lr * min(1.0, (step + 1) / max(1, s.warmup_steps)) * 0.5 * (1 + math.cos(math.pi * step / s.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        batch = data[[rng.randrange(len(data)) for _ in range(s.batch_size)]].to(dev)
        loss = model(batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        if step % 20 == 0 or step == s.steps:
            log.append({"step": step, "loss": round(loss.item(), 4), "lr": lr, "elapsed_s": round(time.time() - start, 1)})
            with open(run_dir / "train_log.jsonl", "a") as f:
                f.write(json.dumps(log[-1]) + "\n")
        if step % CHECKPOINT_EVERY == 0 and step < s.steps:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "log": log,
                        "rng": rng.getstate()}, ckpt)
    bar.close()
    model.save_pretrained(run_dir / "model")
    tok.save_pretrained(run_dir / "model")
    ckpt.unlink(missing_ok=True)
    metrics = {"final_loss": log[-1]["loss"] if log else None, "steps": s.steps,
               "parameters": sum(p.numel() for p in model.parameters()),
               "train_seconds": round(time.time() - start, 1), "model_dir": str(run_dir / "model"),
               "tokens_per_s": round(s.steps * s.batch_size * data.shape[1] / max(1e-9, time.time() - start)),
               "environment": environment()}
    write_json(run_dir / "metrics.json", metrics)
    return RunResult(run_dir, metrics)
