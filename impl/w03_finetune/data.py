"""w03 data: labelled sentences for the classifier, documents for the causal and masked LMs.

Offline (cpu): Pang & Lee movie-review sentences split train/validation/test by sha256 of the sentence id;
Austen/Brown documents split by sha256 of the document id. Hub (gpu): IMDb, WritingPrompts, WikiText-103,
or a local directory of `<split>-*.parquet` files in the hub's layout.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from impl.core.corpora import DataError, Labelled, TextSplits, hub_dataset, offline_splits
from impl.core.fixtures import read_documents
from impl.w03_finetune.spec import LMData, SentimentData


def _bucket(key: str) -> float:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


@dataclass
class SentimentSplits:
    train: Labelled
    val: Labelled
    test: Labelled
    label_names: list[str]
    description: str


def _split_rows(rows: list[tuple[str, str, int]], fractions: dict[str, float]) -> dict[str, Labelled]:
    """rows of (id, text, label) -> splits by hash bucket, each in hash order (so `head(n)` is a fixed sample)."""
    out = {name: [] for name in fractions}
    for rid, text, label in sorted(rows, key=lambda r: _bucket(r[0])):
        b, edge = _bucket(rid), 0.0
        for name, frac in fractions.items():
            edge += frac
            if b < edge or name == list(fractions)[-1]:
                out[name].append((text, label))
                break
    return {k: Labelled([t for t, _ in v], [y for _, y in v]) for k, v in out.items()}


def sentiment_splits(data: SentimentData) -> SentimentSplits:
    if data.source == "offline":
        rows = [(r["id"], r["text"], r["label"]) for name in data.corpus for r in read_documents(name, "sentences.jsonl")]
        parts = _split_rows(rows, {"test": data.test_fraction, "val": data.val_fraction, "train": 1.0})
        names, origin = ["negative", "positive"], f"{'+'.join(data.corpus)} sentences"
        rule = f"split by sha256 of sentence id: test {data.test_fraction}, validation {data.val_fraction}"
    else:
        ds, origin = hub_dataset(data.hub_path, data.hub_name, data.local_dir, ("train", "test"))
        for col in (data.text_column, data.label_column):
            if col not in ds["train"].column_names:
                raise DataError(f"{origin}: no column {col!r}; columns: {ds['train'].column_names}")
        train = ds["train"]
        rows = [(f"train/{i}", t, y) for i, (t, y) in enumerate(zip(train[data.text_column], train[data.label_column]))]
        parts = _split_rows(rows, {"val": data.val_fraction, "train": 1.0})
        test = ds["test"]
        parts["test"] = Labelled(list(test[data.text_column]), list(test[data.label_column]))
        feature = train.features[data.label_column]
        names = list(getattr(feature, "names", None) or sorted({str(y) for y in parts["train"].labels}))
        rule = f"the hub's test split; validation = {data.val_fraction} of train by sha256 of row index"
    for split in ("train", "val", "test"):
        if not len(parts[split]):
            raise DataError(f"{origin}: the {split} split is empty ({rule})")
    train = parts["train"].head(data.max_train_examples)
    val, test = parts["val"].head(data.max_eval_examples), parts["test"].head(data.max_eval_examples)
    if len(set(train.labels)) < 2:
        raise DataError(f"{origin}: the training split has a single class")
    return SentimentSplits(train, val, test, names,
                           f"{origin}, {len(train)}/{len(val)}/{len(test)} train/validation/test ({rule})")


def lm_splits(data: LMData) -> TextSplits:
    """Documents for language modelling: offline fixture corpora, or a hub dataset's train/validation rows."""
    if data.source == "offline":
        return offline_splits(data.corpus, data.val_fraction)
    ds, origin = hub_dataset(data.hub_path, data.hub_name, data.local_dir, ("train", "validation"))
    out = {}
    for split in ("train", "validation"):
        part = ds[split]
        if split == "train" and data.max_train_docs:
            part = part.select(range(min(data.max_train_docs, len(part))))
        missing = [c for c in data.text_columns if c not in part.column_names]
        if missing:
            raise DataError(f"{origin}: no column(s) {missing}; columns: {part.column_names}")
        cols = [part[c] for c in data.text_columns]
        # WritingPrompts marks line breaks as "<newline>"
        docs = ["\n\n".join(str(v).strip() for v in vals).replace(" <newline> ", "\n").replace("<newline>", "\n")
                for vals in zip(*cols)]
        out[split] = [d for d in docs if d.strip()]
        if not out[split]:
            raise DataError(f"{origin}: the {split} split is empty")
    return TextSplits(out["train"], out["validation"],
                      f"{origin}, {len(out['train'])}/{len(out['validation'])} train/validation rows "
                      f"(columns {'+'.join(data.text_columns)})")
