"""Train and evaluate the w01 GPT: one process, or DDP under torchrun (NCCL on GPUs, gloo on CPUs).

    python -m impl train w01 --profile cpu        # what the acceptance test runs, with a progress bar

AdamW with linear warm-up and cosine decay, gradient clipping and accumulation, bf16 autocast when the profile
asks for it (on GPUs; fp32 on this CPU, where bf16 is ~500x slower), atomic checkpoints every
`checkpoint_every` steps, and a resumed run that reproduces the uninterrupted one exactly: the batch of each
step is a function of (seed, step) and the RNG state is checkpointed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_model, save_model
from tqdm import tqdm

from impl.core.artifacts import CheckpointError, RunResult, environment, write_json
from impl.core.distributed import init_from_env, leave, shutdown, torchrun
from impl.units import w01
from impl.w01_gpt.data import EOT, TokenData, batch, load_tokenizer, prepare, unigram_ppl
from impl.w01_gpt.model import GPT, GPTConfig
from impl.w01_gpt.optim import AdamW
from impl.w01_gpt.spec import W01Spec


def gpt_config(spec: W01Spec, vocab_size: int) -> GPTConfig:
    m = spec.model
    return GPTConfig(vocab_size=vocab_size, context=m.context, n_layer=m.n_layer, n_head=m.n_head,
                     n_embd=m.n_embd, dropout=m.dropout)


def lr_at(step: int, spec: W01Spec) -> float:
    t = spec.train
    return w01.cosine_lr(step, t.lr, t.min_lr, t.warmup_steps, t.steps)


def make_optimizer(model: GPT, spec: W01Spec, cls=AdamW) -> torch.optim.Optimizer:
    """AdamW (betas 0.9, 0.95) with weight decay on matrices and embeddings only. `cls`: w01's own AdamW, whose
    update is the adamw_step unit; the DeepSpeed runs pass torch.optim.AdamW (ZeRO's tested type)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]  # matrices and embeddings; not biases or norms
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return cls([{"params": decay, "weight_decay": spec.train.weight_decay},
                {"params": no_decay, "weight_decay": 0.0}], lr=spec.train.lr, betas=(0.9, 0.95))


def autocast(spec: W01Spec, device: torch.device):
    if spec.train.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(model: GPT, tokens, context: int, stride: int, max_tokens: int | None, device: torch.device,
             spec: W01Spec | None = None, batch_windows: int = 16) -> dict:
    """Sliding-window perplexity: windows of `context` tokens every `stride`; each scores only its new tokens."""
    model.eval()
    n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens + 1)
    windows, prev_end = [], 0
    for begin in range(0, n - 1, stride):
        end = min(begin + context, n - 1)
        windows.append((begin, end, end - prev_end))  # score targets[end - new : end]
        prev_end = end
        if end == n - 1:
            break
    total_nll, total = 0.0, 0
    ctx = autocast(spec, device) if spec else nullcontext()
    for i in range(0, len(windows), batch_windows):
        group = windows[i:i + batch_windows]
        width = max(e - b for b, e, _ in group)
        x = torch.zeros(len(group), width, dtype=torch.long)
        y = torch.full((len(group), width), -1, dtype=torch.long)
        for row, (b, e, new) in enumerate(group):
            x[row, :e - b] = torch.as_tensor(tokens[b:e])
            target = torch.as_tensor(tokens[b + 1:e + 1]).long()
            target[:-new] = -1  # already scored by the previous window
            y[row, :e - b] = target
        with ctx:
            logits, _ = model(x.to(device))
        nll = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.to(device).reshape(-1),
                                                ignore_index=-1, reduction="sum")
        total_nll += nll.item()
        total += int((y >= 0).sum())
    model.train()
    loss = total_nll / total
    return {"val_loss": loss, "val_ppl": math.exp(loss), "val_tokens_scored": total}


def _save_checkpoint(path: Path, model: GPT, opt, step: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "rng": torch.get_rng_state()}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        missing = {"model", "optimizer", "step", "rng"} - set(ckpt)
        if missing:
            raise ValueError(f"missing entries {sorted(missing)}")
        return ckpt
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(e).__name__}: {str(e)[:200]}). It was left as it is: "
            f"restore it, or move it away to start this run again from step 0") from None


def load_trained(run_dir: Path) -> tuple[GPT, object]:
    """The final model and tokenizer of a complete run."""
    config = json.loads((run_dir / "model_config.json").read_text())
    model = GPT(GPTConfig(**config))
    try:
        load_model(model, str(run_dir / "model.safetensors"))
    except Exception as e:
        raise CheckpointError(f"{run_dir / 'model.safetensors'} cannot be loaded ({type(e).__name__}: {e})") from None
    return model.eval(), load_tokenizer(run_dir)


def train_process(spec: W01Spec, run_dir: Path, progress: bool = False, do_eval: bool = True,
                  skip_allreduce: bool = False) -> None:
    """The body of one process; under torchrun every rank runs it."""
    rank, world, device = init_from_env()
    t = spec.train
    per_rank, rem = divmod(t.batch_size, world * t.grad_accum)
    if rem or per_rank == 0:
        raise ValueError(f"train.batch_size={t.batch_size} must be a multiple of processes x grad_accum "
                         f"= {world} x {t.grad_accum}")
    data = prepare(spec.data, spec.tokenizer)
    torch.manual_seed(t.seed)  # same initial weights on every rank
    model = GPT(gpt_config(spec, data.vocab_size)).to(device)
    opt = make_optimizer(model, spec)
    ckpt_path, log_path = run_dir / "checkpoint.pt", run_dir / "train_log.jsonl"
    start = 0
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"])
        start = ckpt["step"]
    if rank == 0:  # keep the log up to the checkpoint; steps after it are trained again
        kept = [l for l in (log_path.read_text().splitlines() if log_path.exists() else [])
                if json.loads(l)["step"] < start]
        log_path.write_text("".join(l + "\n" for l in kept))
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)

    bar = tqdm(total=t.steps, initial=start, disable=not progress or rank != 0, desc="w01 train", unit="step")
    tokens_per_step = t.batch_size * spec.model.context
    timed_steps, timed_seconds = 0, 0.0
    for step in range(start, t.steps):
        t0 = time.perf_counter()
        lr = lr_at(step, spec)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = batch(data.train, t.seed, step, t.batch_size, spec.model.context)
        x, y = x[rank * per_rank * t.grad_accum:(rank + 1) * per_rank * t.grad_accum], \
            y[rank * per_rank * t.grad_accum:(rank + 1) * per_rank * t.grad_accum]
        step_loss = torch.zeros((), device=device)
        for micro in range(t.grad_accum):
            xs, ys = (v[micro * per_rank:(micro + 1) * per_rank].to(device) for v in (x, y))
            sync = world > 1 and micro == t.grad_accum - 1 and not skip_allreduce
            with (nullcontext() if sync or world == 1 else net.no_sync()), autocast(spec, device):
                _, loss = net(xs, ys)
            (loss / t.grad_accum).backward()
            step_loss += loss.detach() / t.grad_accum
        grad_norm = w01.clip_grad_norm([p.grad for p in model.parameters() if p.grad is not None], t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if world > 1:
            dist.all_reduce(step_loss, op=dist.ReduceOp.AVG if device.type == "cuda" else dist.ReduceOp.SUM)
            if device.type != "cuda":
                step_loss /= world  # gloo has no AVG
        loss_value = step_loss.item()
        if step > start:  # the first step pays one-time costs
            timed_steps, timed_seconds = timed_steps + 1, timed_seconds + time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}")
        if rank == 0 and (step % t.log_every == 0 or step == t.steps - 1):
            with open(log_path, "a") as f:
                f.write(json.dumps({"step": step, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm),
                                    "tokens": (step + 1) * tokens_per_step}) + "\n")
        if (step + 1) % t.checkpoint_every == 0 and step + 1 < t.steps:
            if rank == 0:
                _save_checkpoint(ckpt_path, model, opt, step + 1)
            if world > 1:
                dist.barrier()
    bar.close()
    if rank == 0:
        _finish(spec, run_dir, model, opt, data, device, world, do_eval,
                tokens_per_step * timed_steps / timed_seconds if timed_seconds else float("nan"))
    if world > 1:
        dist.barrier()
    shutdown()


def _finish(spec, run_dir, model, opt, data: TokenData, device, world, do_eval, tokens_per_s) -> None:
    save_model(model, str(run_dir / "model.safetensors"))
    (run_dir / "model_config.json").write_text(json.dumps(vars(model.cfg)))
    (run_dir / "tokenizer.json").write_bytes((data.tokenizer_dir / "tokenizer.json").read_bytes())
    metrics = {"params": model.num_params(), "world_size": world, "train_tokens_per_s": tokens_per_s,
               "flops_per_token": model.flops_per_token(), "final_train_loss": None}
    log = [json.loads(l) for l in (run_dir / "train_log.jsonl").read_text().splitlines()]
    if log:
        metrics["final_train_loss"] = log[-1]["loss"]
    if device.type == "cuda":
        metrics["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        metrics["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak RSS
    if do_eval:
        ev = evaluate(model, data.val, spec.model.context, spec.eval.stride, spec.eval.max_tokens, device, spec)
        metrics.update(ev)
        metrics["val_bpb"] = ev["val_loss"] / math.log(2) / data.val_bytes_per_token
        metrics["unigram_val_ppl"] = unigram_ppl(data.train, data.val, data.vocab_size, spec.eval.max_tokens)
        metrics["sample"] = sample(model, load_tokenizer(data.tokenizer_dir), device)
    metrics["data"] = data.description
    write_json(run_dir / "env.json", environment())
    write_json(run_dir / "metrics.json", metrics)  # last: its presence marks the run complete
    (run_dir / "checkpoint.pt").unlink(missing_ok=True)


def sample(model: GPT, tok, device, max_new_tokens: int = 48, seed: int = 0) -> str:
    prompt = torch.tensor([[tok.convert_tokens_to_ids(EOT)]], device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    out = model.generate(prompt, max_new_tokens, temperature=0.8, top_k=40, generator=g)
    model.train()
    return tok.decode(out[0, 1:].tolist())


def run(spec: W01Spec, run_dir: Path, progress: bool = False, do_eval: bool = True,
        skip_allreduce: bool = False, timeout_s: float = 6 * 3600) -> RunResult:
    """Train (or finish an interrupted run) into `run_dir` unless it is complete already; return its metrics."""
    if (run_dir / "metrics.json").exists():
        return RunResult(run_dir, json.loads((run_dir / "metrics.json").read_text()), reused=True)
    write_json(run_dir / "spec.json", spec.model_dump())
    prepare(spec.data, spec.tokenizer)  # build the token cache once, before any rank needs it
    if spec.train.nproc > 1:
        args = ["--run-dir", str(run_dir)] + ([] if do_eval else ["--no-eval"]) + \
               (["--skip-allreduce"] if skip_allreduce else [])
        torchrun("impl.w01_gpt.train", args, spec.train.nproc, timeout_s, run_dir / "torchrun.log",
                 expect=run_dir / "metrics.json")
    else:
        train_process(spec, run_dir, progress, do_eval, skip_allreduce)
    return RunResult(run_dir, json.loads((run_dir / "metrics.json").read_text()))


def main() -> None:  # torchrun entry point
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--no-eval", action="store_true")
    p.add_argument("--skip-allreduce", action="store_true")
    a = p.parse_args()
    spec = W01Spec.model_validate(json.loads((a.run_dir / "spec.json").read_text()))
    train_process(spec, a.run_dir, progress=False, do_eval=not a.no_eval, skip_allreduce=a.skip_allreduce)
    leave()


if __name__ == "__main__":
    main()
