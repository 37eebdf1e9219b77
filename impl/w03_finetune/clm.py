"""w03 check 2: fine-tune a pretrained causal LM on new text, measure validation perplexity before and after on
the same held-out tokens, and write stories from fixed prompts with fixed seeds.

    python -m impl train w03 --profile cpu     # this check: SmolLM2-135M-Instruct on Jane Austen's chapters

Training text is the training documents joined by the end-of-text token and cut into `block_size` blocks;
perplexity is exp(mean next-token NLL) over the first `eval_tokens` validation tokens in non-overlapping
`block_size` windows (the protocol of transformers' run_clm example).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from impl.core.artifacts import RunResult, environment, write_json
from impl.core.corpora import DataError
from impl.core.hf import JsonlLog, load_model, load_tokenizer, training_arguments
from impl.w03_finetune.data import lm_splits
from impl.w03_finetune.spec import ClmSpec


def token_stream(tokenizer, docs: list[str], limit: int | None) -> list[int]:
    """Documents joined by EOS, tokenized until `limit` tokens (None: all)."""
    ids: list[int] = []
    for i in range(0, len(docs), 64):
        for row in tokenizer(docs[i:i + 64], add_special_tokens=False)["input_ids"]:
            ids.extend(row + [tokenizer.eos_token_id])
        if limit is not None and len(ids) >= limit:
            return ids[:limit]
    return ids


def blocks(ids: list[int], block_size: int) -> list[list[int]]:
    return [ids[i:i + block_size] for i in range(0, len(ids) - block_size + 1, block_size)]


@torch.no_grad()
def perplexity(model, windows: list[list[int]], batch_size: int = 4) -> float:
    model.eval()
    device = next(model.parameters()).device
    nll, n = 0.0, 0
    for i in range(0, len(windows), batch_size):
        x = torch.tensor(windows[i:i + batch_size], device=device)
        loss = model(input_ids=x, labels=x).loss  # mean over the batch's (block_size - 1) * rows targets
        count = x.shape[0] * (x.shape[1] - 1)
        nll, n = nll + loss.item() * count, n + count
    return math.exp(nll / n)


@torch.no_grad()
def write_stories(model, tokenizer, spec: ClmSpec) -> list[dict]:
    s = spec.stories
    model.eval()
    tokenizer.padding_side = "left"  # generation continues every prompt from its last token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    enc = tokenizer(s.prompts, return_tensors="pt", padding=True).to(next(model.parameters()).device)
    torch.manual_seed(s.seed)
    out = model.generate(**enc, do_sample=True, temperature=s.temperature, top_p=s.top_p,
                         max_new_tokens=s.max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [{"prompt": p, "story": t.strip()} for p, t in zip(s.prompts, texts)]


def run(spec: ClmSpec, run_dir: Path, progress: bool = False) -> RunResult:
    if (run_dir / "metrics.json").exists():
        return RunResult(run_dir, json.loads((run_dir / "metrics.json").read_text()), reused=True)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, Trainer, default_data_collator, set_seed

    splits = lm_splits(spec.data)
    tokenizer = load_tokenizer(spec.model)
    set_seed(spec.train.seed)
    model = load_model(AutoModelForCausalLM, spec.model, dtype=torch.float32)
    if torch.cuda.is_available():
        model.cuda()

    need = spec.train.steps * spec.train.batch_size * spec.block_size if spec.train.steps else None
    train_blocks = blocks(token_stream(tokenizer, splits.train, need), spec.block_size)
    val_windows = blocks(token_stream(tokenizer, splits.val, spec.eval_tokens), spec.block_size)
    if not train_blocks or not val_windows:
        raise DataError(f"{splits.description}: fewer than {spec.block_size} tokens in a split")

    t0 = time.time()
    ppl_before = perplexity(model, val_windows)
    eval_s = time.time() - t0

    if spec.freeze_embeddings:  # tied input/output embeddings: the largest matrix, kept as pretrained
        model.get_input_embeddings().weight.requires_grad_(False)
    train_ds = Dataset.from_dict({"input_ids": train_blocks, "labels": train_blocks})
    trainer = Trainer(model=model, args=training_arguments(spec.train, run_dir / "trainer", progress),
                      train_dataset=train_ds, data_collator=default_data_collator,
                      callbacks=[JsonlLog(run_dir / "train_log.jsonl")])
    t0 = time.time()
    trainer.train()
    train_s = time.time() - t0
    trainer.save_model(str(run_dir / "model"))
    tokenizer.save_pretrained(run_dir / "model")

    ppl_after = perplexity(model, val_windows)
    t0 = time.time()
    stories = write_stories(model, tokenizer, spec)
    gen_s = time.time() - t0
    write_json(run_dir / "stories.json", stories)
    trained_tokens = trainer.state.global_step * spec.train.batch_size * spec.block_size
    metrics = {
        "val_ppl": ppl_after, "ppl_before_finetune": ppl_before, "ppl_ratio": ppl_after / ppl_before,
        "stories": stories, "decoding": f"sampling, temperature {spec.stories.temperature}, top_p "
        f"{spec.stories.top_p}, {spec.stories.max_new_tokens} new tokens, torch seed {spec.stories.seed}",
        "data": splits.description, "model": spec.model, "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train_tokens": trained_tokens, "val_tokens_scored": len(val_windows) * (spec.block_size - 1),
        "train_s": round(train_s, 1), "eval_s": round(eval_s, 1), "generate_s": round(gen_s, 1),
        "train_tokens_per_s": round(trained_tokens / train_s, 1),
    }
    write_json(run_dir / "env.json", environment())
    write_json(run_dir / "metrics.json", metrics)
    return RunResult(run_dir, metrics)
