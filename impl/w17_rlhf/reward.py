"""Stage 2: preference pairs from the SFT policy at two temperatures, and a reward model trained on them with
TRL's RewardTrainer (Bradley-Terry loss, -log sigmoid(r_chosen - r_rejected)).

The rule that picks "chosen" (the profile's `pairs.chosen`, low_temperature): of the two answers to one prompt,
the one sampled at the lower temperature. A small model's high-temperature samples wander off into unlikely
words; the low-temperature ones stay fluent. The evaluation stage measures this against the judge (its per-token
log-likelihood of every held-out pair's chosen and rejected answer) and records it beside the rule.

The reward model is the SFT policy's transformer with a scalar head (AutoModelForSequenceClassification,
num_labels=1), scored at the last token before the end-of-text that RewardTrainer appends.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

from impl.core.artifacts import RunResult, environment, write_json
from impl.core.hf import device, load_model, load_tokenizer
from impl.w17_rlhf.data import sample, split_pairs, write_pairs
from impl.w17_rlhf.policy import generate_texts, load_policy


def make_pairs(spec, prompts, sft_dir: Path) -> list[dict]:
    """One pair per sampled training prompt: answers at the two temperatures, chosen by the profile's rule."""
    model, tok = load_policy(sft_dir)
    model.to(device())
    chosen_t, rejected_t = sorted(spec.pairs.temperatures)  # low_temperature: the lower one is chosen
    heads = [ids[:spec.prompt_tokens] for ids in sample(prompts.train, spec.pairs.prompts, spec.pairs.seed)]
    low = generate_texts(model, tok, heads, spec.answer_tokens, chosen_t, spec.pairs.seed + 1)
    high = generate_texts(model, tok, heads, spec.answer_tokens, rejected_t, spec.pairs.seed + 2)
    return [{"prompt": tok.decode(h), "chosen": tok.decode(a), "rejected": tok.decode(b)}
            for h, a, b in zip(heads, low, high)]


@torch.no_grad()
def score(model, tok, prompts: list[str], answers: list[str], batch_size: int = 64) -> list[float]:
    """The reward model's scalar for each prompt + answer, tokenised as RewardTrainer does (end-of-text appended)."""
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        texts = [p + a + tok.eos_token for p, a in zip(prompts[i:i + batch_size], answers[i:i + batch_size])]
        enc = tok(texts, return_tensors="pt", padding=True, padding_side="right").to(dev)
        out += model(**enc).logits[:, 0].float().tolist()
    return out


def load_reward_model(model_dir):
    from transformers import AutoModelForSequenceClassification

    tok = load_tokenizer(str(model_dir))
    return load_model(AutoModelForSequenceClassification, str(model_dir), dtype=torch.float32).to(device()), tok


def pair_accuracy(model, tok, pairs: list[dict]) -> float:
    c = score(model, tok, [p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
    r = score(model, tok, [p["prompt"] for p in pairs], [p["rejected"] for p in pairs])
    return sum(a > b for a, b in zip(c, r)) / len(pairs)


def run(spec, prompts, sft_dir: Path, run_dir: Path, pairs: list[dict] | None, shuffle: bool = False,
        progress: bool = False) -> RunResult:
    """`pairs`: a checked preference file's pairs, or None to generate them. `shuffle` (the sabotage twin): half
    the training pairs, drawn at random, have chosen and rejected swapped, so the labels carry no signal."""
    if (run_dir / "metrics.json").exists():
        return RunResult(run_dir, json.loads((run_dir / "metrics.json").read_text()), reused=True)
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from impl.core.hf import JsonlLog

    start = time.time()
    source = "file" if pairs is not None else "generated"
    if pairs is None:
        pairs = make_pairs(spec, prompts, sft_dir)
    write_pairs(run_dir / "pairs.jsonl", pairs)
    train, held = split_pairs(pairs, spec.pairs.heldout_fraction)
    if shuffle:  # exactly half swapped: a coin per pair leaves a majority, which these separable pairs follow
        swap = set(random.Random(spec.reward.seed).sample(range(len(train)), len(train) // 2))
        train = [({**p, "chosen": p["rejected"], "rejected": p["chosen"]} if i in swap else p) for i, p in enumerate(train)]
    r = spec.reward
    tok = load_tokenizer(str(sft_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(r.seed)
    model = load_model(AutoModelForSequenceClassification, str(sft_dir), num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    # the baseline: the same model before training. Its scalar head is random, and on pairs this separable a
    # random direction through the hidden states can already rank most pairs one way (or the other); what the
    # preference labels teach is the gain over that, and over chance
    untrained = pair_accuracy(model.to(device()), tok, held)
    on_gpu = torch.cuda.is_available()
    args = RewardConfig(
        output_dir=str(run_dir / "trainer"), per_device_train_batch_size=r.batch_size, num_train_epochs=r.epochs,
        learning_rate=r.lr, lr_scheduler_type="linear", warmup_steps=0, seed=r.seed, data_seed=r.seed,
        # TRL defaults to bf16 and gradient checkpointing: the profile sets both (off on the cpu profile: bf16
        # matmuls crawl there, and checkpointing buys nothing for a model this small)
        bf16=spec.precision == "bf16", gradient_checkpointing=spec.gradient_checkpointing, use_cpu=not on_gpu,
        report_to="none", save_strategy="no",
        eval_strategy="no", logging_steps=5, disable_tqdm=not progress, dataloader_num_workers=0,
        max_length=spec.prompt_tokens + spec.answer_tokens + 16, dataset_num_proc=None)
    trainer = RewardTrainer(model=model, args=args, processing_class=tok,
                            train_dataset=Dataset.from_list(train), callbacks=[JsonlLog(run_dir / "train_log.jsonl")])
    trainer.train()
    model = trainer.model
    model.save_pretrained(run_dir / "model")
    tok.save_pretrained(run_dir / "model")
    model.to(device())
    metrics = {"pair_accuracy": pair_accuracy(model, tok, held), "train_pair_accuracy": pair_accuracy(model, tok, train),
               "untrained_pair_accuracy": untrained,
               "pairs": len(pairs), "train_pairs": len(train), "heldout_pairs": len(held), "pairs_source": source,
               "shuffled_labels": shuffle, "chosen_rule": spec.pairs.chosen, "temperatures": list(spec.pairs.temperatures),
               "model_dir": str(run_dir / "model"), "pairs_file": str(run_dir / "pairs.jsonl"),
               "train_seconds": round(time.time() - start, 1), "environment": environment()}
    write_json(run_dir / "metrics.json", metrics)
    return RunResult(run_dir, metrics)
