"""The w01 GPT trained on a token stream, scored in bits per byte: w01's model, optimizer, schedule, clipping,
batch sampler and sliding-window evaluation, received from the caller (adapters.w01_training_parts: nothing
copied, and w19 never reaches into w01 itself). Both tokenizers' runs call this with the same model dims,
steps, batch, seed and training text; only the token ids differ.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from impl.units import w19
from impl.w19_data.spec import LMSpec


def steps_for_bytes(lm: LMSpec, bytes_per_token: float) -> int:
    """The steps in which a model whose tokens hold `bytes_per_token` bytes sees `lm.train_bytes` bytes."""
    return max(1, round(lm.train_bytes / (lm.train.batch_size * lm.model.context * bytes_per_token)))


def train_and_score(lm: LMSpec, steps: int, train_ids: np.ndarray, heldout_ids: np.ndarray, heldout_bytes: int,
                    vocab_size: int, run_dir: Path, w01, progress: bool = False) -> dict:
    """Train w01's GPT (`w01`: its model and training parts, received from the caller) on `train_ids` for
    `steps`; return held-out loss (nats/token), token perplexity and bits per byte."""
    from tqdm import tqdm

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    m, t = lm.model, lm.train.model_copy(update={"steps": steps})
    if t.batch_size % t.grad_accum:
        raise ValueError(f"lm.train.batch_size={t.batch_size} must be a multiple of grad_accum={t.grad_accum}")
    torch.manual_seed(t.seed)
    model = w01.model(vocab_size, m.context, m.n_layer, m.n_head, m.n_embd, m.dropout).to(device)
    shim = SimpleNamespace(train=t)  # w01's optimizer and schedule read only the `train` section
    opt = w01.make_optimizer(model, shim)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if t.precision == "bf16" else torch.autocast(
        device.type, enabled=False)
    log, t0 = [], time.perf_counter()
    for step in tqdm(range(t.steps), desc="w19 lm", disable=not progress):
        for g in opt.param_groups:
            g["lr"] = w01.lr_at(step, shim)
        x, y = w01.batch(train_ids, t.seed, step, t.batch_size, m.context)
        micro = t.batch_size // t.grad_accum  # the same global batch in `grad_accum` pieces (GPU memory)
        loss_sum = 0.0
        for i in range(t.grad_accum):
            with ctx:
                _, loss = model(x[i * micro:(i + 1) * micro].to(device), y[i * micro:(i + 1) * micro].to(device))
            (loss / t.grad_accum).backward()
            loss_sum += loss.item() / t.grad_accum
        w01.clip_grad_norm([p.grad for p in model.parameters() if p.grad is not None], t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % t.log_every == 0 or step == t.steps - 1:
            log.append({"step": step, "loss": loss_sum, "tokens": (step + 1) * t.batch_size * m.context})
    seconds = time.perf_counter() - t0
    ev = w01.evaluate(model, heldout_ids, m.context, m.context, None, device)  # stride = context: each token once
    # heldout_ids starts with the end-of-text id, so every token of the text is scored: divide by all its bytes
    assert ev["val_tokens_scored"] == len(heldout_ids) - 1, "the evaluation skipped held-out tokens"
    bytes_scored = heldout_bytes
    counts = np.bincount(train_ids, minlength=vocab_size).astype(np.float64) + 1.0
    unigram_nats = -np.log(counts / counts.sum())[heldout_ids[1:]].sum()
    with open(run_dir / "train_log.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in log)
    return {"val_loss": ev["val_loss"], "token_ppl": math.exp(ev["val_loss"]), "tokens_scored": ev["val_tokens_scored"],
            "bpb": w19.bits_per_byte(ev["val_loss"], ev["val_tokens_scored"], bytes_scored),
            "unigram_bpb": w19.bits_per_byte(float(unigram_nats), 1, bytes_scored),  # a total: n_tokens 1
            "train_seconds": round(seconds, 1), "params": model.num_params(), "final_train_loss": log[-1]["loss"],
            "train_tokens_seen": t.steps * t.batch_size * m.context, "curve": log}
