"""w03 check 3: pretrain a small BERT from scratch with masked language modelling.

    python -m impl train w03 --profile cpu     # this check: a tiny BERT on Austen + Brown

A WordPiece tokenizer is trained from scratch on the training documents (`tokenizers`), a BERT is built from
config, and `Trainer` trains it on `DataCollatorForLanguageModeling` batches (15% of tokens chosen; of those
80% -> [MASK], 10% -> a random token, 10% unchanged). Masked-token accuracy is measured on held-out sequences
masked once with a fixed seed, beside the baseline that always predicts the training text's most frequent token
at exactly the same positions.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import torch

from impl.core.artifacts import RunResult, environment, write_json
from impl.core.corpora import DataError
from impl.core.hf import JsonlLog, load_tokenizer, training_arguments
from impl.core.metrics import load_metric
from impl.w03_finetune.data import lm_splits
from impl.w03_finetune.spec import MlmSpec

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
EVAL_MASK_SEED = 1234  # the held-out masks are the same in every run, so runs are comparable


def train_wordpiece(texts: list[str], vocab_size: int, out_dir: Path):
    """A BERT-style uncased WordPiece tokenizer trained on `texts`, saved to `out_dir` and loaded back."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(out_dir)
    return load_tokenizer(str(out_dir))


def sequences(tokenizer, docs: list[str], seq_len: int, limit: int | None) -> list[list[int]]:
    """Paragraphs tokenized and concatenated, cut into [CLS] + (seq_len - 2) tokens + [SEP]."""
    body, out, ids = seq_len - 2, [], []
    paragraphs = [p for d in docs for p in d.split("\n") if p.strip()]
    for i in range(0, len(paragraphs), 256):
        for row in tokenizer(paragraphs[i:i + 256], add_special_tokens=False)["input_ids"]:
            ids.extend(row)
        while len(ids) >= body:
            out.append([tokenizer.cls_token_id] + ids[:body] + [tokenizer.sep_token_id])
            ids = ids[body:]
            if limit is not None and len(out) >= limit:
                return out
    return out


def masked_batches(tokenizer, seqs: list[list[int]], probability: float, batch_size: int = 64) -> list[dict]:
    from transformers import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=probability, seed=EVAL_MASK_SEED)
    return [collator([{"input_ids": s} for s in seqs[i:i + batch_size]]) for i in range(0, len(seqs), batch_size)]


@torch.no_grad()
def masked_accuracy(model, batches: list[dict]) -> float:
    model.eval()
    device = next(model.parameters()).device
    preds, refs = [], []
    for b in batches:
        logits = model(input_ids=b["input_ids"].to(device)).logits
        chosen = b["labels"] != -100
        preds += logits.argmax(-1).cpu()[chosen].tolist()
        refs += b["labels"][chosen].tolist()
    return load_metric("accuracy").compute(predictions=preds, references=refs)["accuracy"]


def most_frequent_token_accuracy(train: list[list[int]], batches: list[dict], special: set[int]) -> tuple[float, int]:
    counts = Counter(t for s in train for t in s if t not in special)
    top = counts.most_common(1)[0][0]
    refs = [t for b in batches for t in b["labels"][b["labels"] != -100].tolist()]
    return sum(t == top for t in refs) / len(refs), top


def run(spec: MlmSpec, run_dir: Path, progress: bool = False) -> RunResult:
    if (run_dir / "metrics.json").exists():
        return RunResult(run_dir, json.loads((run_dir / "metrics.json").read_text()), reused=True)
    from datasets import Dataset
    from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling, Trainer, set_seed

    splits = lm_splits(spec.data)
    t0 = time.time()
    tokenizer = train_wordpiece(splits.train, spec.vocab_size, run_dir / "tokenizer")
    tokenizer_s = time.time() - t0
    train_seqs = sequences(tokenizer, splits.train, spec.seq_len, spec.max_train_sequences)
    eval_seqs = sequences(tokenizer, splits.val, spec.seq_len, spec.eval_sequences)
    if not train_seqs or not eval_seqs:
        raise DataError(f"{splits.description}: a split has fewer than {spec.seq_len} tokens")
    eval_batches = masked_batches(tokenizer, eval_seqs, spec.mask_probability)
    special = set(tokenizer.all_special_ids)
    baseline, top = most_frequent_token_accuracy(train_seqs, eval_batches, special)

    set_seed(spec.train.seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=spec.n_embd, num_hidden_layers=spec.n_layer,
                        num_attention_heads=spec.n_head, intermediate_size=4 * spec.n_embd,
                        max_position_embeddings=spec.seq_len, hidden_dropout_prob=spec.dropout,
                        attention_probs_dropout_prob=spec.dropout, pad_token_id=tokenizer.pad_token_id)
    model = BertForMaskedLM(config)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=spec.mask_probability, seed=spec.train.seed)
    trainer = Trainer(model=model, args=training_arguments(spec.train, run_dir / "trainer", progress),
                      train_dataset=Dataset.from_dict({"input_ids": train_seqs}), data_collator=collator,
                      callbacks=[JsonlLog(run_dir / "train_log.jsonl")])
    t0 = time.time()
    trainer.train()
    train_s = time.time() - t0
    trainer.save_model(str(run_dir / "model"))
    accuracy = masked_accuracy(model, eval_batches)
    trained_tokens = trainer.state.global_step * spec.train.batch_size * spec.seq_len
    metrics = {
        "masked_accuracy": accuracy, "most_frequent_token": baseline,
        "most_frequent_token_text": tokenizer.convert_ids_to_tokens(top),
        "masked_positions_scored": sum(int((b["labels"] != -100).sum()) for b in eval_batches),
        "data": splits.description, "vocab_size": len(tokenizer),
        "params": sum(p.numel() for p in model.parameters()), "train_sequences": len(train_seqs),
        "train_tokens": trained_tokens, "tokenizer_s": round(tokenizer_s, 1), "train_s": round(train_s, 1),
        "train_tokens_per_s": round(trained_tokens / train_s, 1),
    }
    write_json(run_dir / "env.json", environment())
    write_json(run_dir / "metrics.json", metrics)
    return RunResult(run_dir, metrics)
