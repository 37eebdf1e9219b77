"""Stage 2: preference pairs labelled by a sentiment classifier, and a reward model trained on them with TRL's
RewardTrainer (Bradley-Terry loss, -log sigmoid(r_chosen - r_rejected)).

The SFT policy answers each sampled training prompt twice at the same temperature; the labeller (a TF-IDF +
logistic-regression classifier trained on human labels, `Labeller`) scores prompt + answer, and the more positive
answer is chosen (TRL's classic sentiment task, with a labeller that is neither the judge nor a likelihood). A
pair whose two answers the labeller cannot tell apart is dropped.

The reward model is the SFT policy's transformer with a scalar head (AutoModelForSequenceClassification,
num_labels=1), scored at the last token before the end-of-text that RewardTrainer appends. Its held-out pair
accuracy is compared with chance, with the same model before training (its random head, in whichever orientation
ranks better) and with the SFT policy's own log-likelihood ranking (also its better orientation).
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

from impl.core.artifacts import RunResult, environment, write_json
from impl.core.hf import device, load_model, load_tokenizer
from impl.w17_rlhf.data import Labelled, PreferenceDataError, sample, split_pairs, write_pairs
from impl.w17_rlhf.judge import SentimentClassifier
from impl.w17_rlhf.policy import generate_texts, load_policy, text_logprobs


class Labeller(SentimentClassifier):
    """P(positive | text) from human labels: TF-IDF over word 1-2-grams, logistic regression (scikit-learn)."""

    def __init__(self, labelled: Labelled, seed: int = 0):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        super().__init__(labelled, TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                         LogisticRegression(C=4.0, max_iter=2000, random_state=seed))

    def favourite_words(self, n: int) -> list[str]:
        """The n single words that push P(positive) up most."""
        names, weights = self.vectorizer.get_feature_names_out(), self.classifier.coef_[0]
        ranked = sorted(range(len(names)), key=lambda i: -weights[i])
        return [names[i] for i in ranked if " " not in names[i]][:n]


def make_pairs(spec, prompts, sft_dir: Path, labeller: Labeller) -> list[dict]:
    """One pair per sampled training prompt whose two answers (same temperature, two seeds) the labeller tells
    apart by at least `pairs.min_margin` in P(positive): chosen = the one it finds more positive."""
    model, tok = load_policy(sft_dir)
    model.to(device())
    p = spec.pairs
    heads = [ids[:spec.prompt_tokens] for ids in sample(prompts.train, p.prompts, p.seed)]
    first = generate_texts(model, tok, heads, spec.answer_tokens, p.temperature, p.seed + 1)
    second = generate_texts(model, tok, heads, spec.answer_tokens, p.temperature, p.seed + 2)
    texts_p, texts_a, texts_b = tok.batch_decode(heads), tok.batch_decode(first), tok.batch_decode(second)
    pa = labeller.positive([x + y for x, y in zip(texts_p, texts_a)])
    pb = labeller.positive([x + y for x, y in zip(texts_p, texts_b)])
    return [{"prompt": pr, "chosen": a if sa > sb else b, "rejected": b if sa > sb else a,
             "labeller_margin": abs(sa - sb)}
            for pr, a, b, sa, sb in zip(texts_p, texts_a, texts_b, pa, pb) if abs(sa - sb) >= max(p.min_margin, 1e-6)]


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


def loglik_ranking_accuracy(sft_dir: Path, pairs: list[dict]) -> float:
    """How often the SFT policy finds the chosen answer more likely than the rejected (summed log-probability of
    the answer given the prompt)."""
    model, tok = load_policy(sft_dir)
    model.to(device()).eval()
    prompts = [p["prompt"] for p in pairs]
    c, r = text_logprobs(model, tok, prompts, [p["chosen"] for p in pairs]), \
        text_logprobs(model, tok, prompts, [p["rejected"] for p in pairs])
    return sum(a > b for a, b in zip(c, r)) / len(pairs)


def run(spec, prompts, sft_dir: Path, run_dir: Path, pairs: list[dict] | None, shuffle: bool = False,
        progress: bool = False) -> RunResult:
    """`pairs`: a checked preference file's pairs, or None to generate them (labelled by a `Labeller` trained on
    `prompts.labelled`). `shuffle` (the sabotage twin): half the training pairs, drawn at random, have chosen and
    rejected swapped, so the labels carry no signal."""
    if (run_dir / "metrics.json").exists():
        return RunResult(run_dir, json.loads((run_dir / "metrics.json").read_text()), reused=True)
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from impl.core.hf import JsonlLog

    start = time.time()
    source = "file" if pairs is not None else "generated"
    labeller = Labeller(prompts.labelled, spec.pairs.seed)
    labeller_accuracy = labeller.accuracy(prompts.heldout)
    if pairs is None:
        pairs = make_pairs(spec, prompts, sft_dir, labeller)
    train, held = split_pairs(pairs, spec.pairs.heldout_fraction)
    if not train or not held:
        raise PreferenceDataError(
            f"{len(pairs)} preference pairs ({source}) leave {len(train)} to train the reward model on and "
            f"{len(held)} to check it on: generate more (pairs.prompts {spec.pairs.prompts}) or keep closer ones "
            f"(pairs.min_margin {spec.pairs.min_margin}: the labeller's least difference in P(positive))")
    write_pairs(run_dir / "pairs.jsonl", pairs)
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
    # the baselines: the same model before training (a random scalar head: a random direction through the hidden
    # states can rank pairs one way or the other, so the better orientation counts) and the SFT policy's own
    # likelihood; what the preference labels teach is the gain over them, and over chance
    untrained = pair_accuracy(model.to(device()), tok, held)
    untrained = max(untrained, 1 - untrained)
    loglik = loglik_ranking_accuracy(sft_dir, held)
    loglik = max(loglik, 1 - loglik)
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
               "untrained_pair_accuracy": untrained, "sft_loglik_pair_accuracy": loglik,
               "labeller_accuracy": labeller_accuracy, "labeller_texts": len(prompts.labelled.texts),
               "labeller_checked_on": len(prompts.heldout.texts),
               "favourite_words": labeller.favourite_words(12),
               "pairs": len(pairs), "train_pairs": len(train), "heldout_pairs": len(held), "pairs_source": source,
               "shuffled_labels": shuffle, "temperature": spec.pairs.temperature,
               "model_dir": str(run_dir / "model"), "pairs_file": str(run_dir / "pairs.jsonl"),
               "train_seconds": round(time.time() - start, 1), "environment": environment()}
    write_json(run_dir / "metrics.json", metrics)
    return RunResult(run_dir, metrics)
