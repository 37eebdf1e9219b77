"""Prompts and human sentiment labels, and preference pairs as a checked JSONL file.

Offline (cpu): the `pang-lee` fixture, 10,531 movie-review sentences (Pang & Lee 2005), each labelled positive or
negative by the sign of the mean of ten human ratings (shipped with vaderSentiment). Hub (gpu1): a dataset with a
text and a 0/1 label column (stanfordnlp/imdb: reviews), its `split`, or that split's parquet files in
`local_dir`. A prompt is the opening `prompt_tokens` tokens of a text; its next `answer_tokens` tokens are the SFT
demonstration. Texts go wholly to the test side (the prompts the policies are judged on) or the training side
(SFT, preference prompts, PPO prompts) by a hash of their id. The human labels of the training side are split by
another hash: the labeller (reward.py), which labels the preference pairs, learns `labelled_fraction` of them; the
judge (judge.py), which stands in for the human raters, learns the rest. Both are scored on the test side's labels.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from impl.core.corpora import DataError, Labelled, hub_dataset, in_val
from impl.core.errors import MilestonesError
from impl.core.fixtures import read_documents

FIELDS = ("prompt", "chosen", "rejected")


class PreferenceDataError(MilestonesError, ValueError):
    pass


@dataclass
class Prompts:
    train: list[list[int]]  # token ids: prompt + answer_tokens of the text's own continuation
    test: list[list[int]]  # prompt tokens only
    labelled: Labelled  # the labeller's training texts (human labels)
    unlabelled: Labelled  # the rest of the training side's labels, which the labeller never sees: the judge's
    heldout: Labelled  # the test side's texts and labels: the labeller's and the judge's accuracy
    description: str


def labelled_rows(data) -> tuple[list[tuple[str, str, int]], str]:
    """(id, text, label 0/1) rows and where they came from."""
    if data.source == "offline":
        rows = [(r["id"], r["text"], int(r["label"])) for name in data.corpus
                for r in read_documents(name, "sentences.jsonl")]
        return rows, f"{'+'.join(data.corpus)} movie-review sentences (human labels: the sign of 10 ratings' mean)"
    ds, origin = hub_dataset(data.hub_path, data.hub_name, data.local_dir, (data.split,))
    table = ds[data.split]
    for col in (data.text_column, data.label_column):
        if col not in table.column_names:
            raise DataError(f"{origin}: no column {col!r}; columns: {table.column_names}")
    rows = [(f"{data.split}/{i}", t, int(y)) for i, (t, y) in enumerate(zip(table[data.text_column],
                                                                             table[data.label_column]))]
    return rows, f"{origin}, split {data.split}"


def load_prompts(spec, tokenizer) -> Prompts:
    """Every text long enough for prompt + answer, as token ids, the training and test sides apart; the human
    labels of the training side split between the labeller and its held-out check."""
    rows, origin = labelled_rows(spec.data)
    if {y for _, _, y in rows} - {0, 1}:
        raise DataError(f"{origin}: labels must be 0 (negative) and 1 (positive); got {sorted({y for *_, y in rows})[:5]}")
    need = spec.prompt_tokens + spec.answer_tokens
    train, test = [], []
    labelled, unlabelled, heldout = Labelled([], []), Labelled([], []), Labelled([], [])
    ids_all = tokenizer([t for _, t, _ in rows])["input_ids"] if rows else []
    for (rid, text, label), ids in zip(rows, ids_all):
        if in_val(rid, spec.data.val_fraction):
            if len(ids) >= need:
                test.append(ids[:spec.prompt_tokens])
            heldout.texts.append(text)
            heldout.labels.append(label)
            continue
        if len(ids) >= need:
            train.append(ids[:need])
        half = labelled if in_val("label:" + rid, spec.pairs.labelled_fraction) else unlabelled
        half.texts.append(text)
        half.labels.append(label)
    if not train or not test:
        raise PreferenceDataError(f"{origin}: no texts of >= {need} tokens on one side (train {len(train)}, test "
                                  f"{len(test)})")
    if len(set(labelled.labels)) < 2 or len(set(unlabelled.labels)) < 2:
        raise DataError(f"{origin}: the labeller and the judge each need both labels among the training side's "
                        f"({len(labelled.texts)} and {len(unlabelled.texts)} texts)")
    return Prompts(train, test, labelled, unlabelled, heldout,
                   f"{origin}: openings ({spec.prompt_tokens} tokens) of texts of >= {need} tokens; {len(train):,} "
                   f"training / {len(test):,} test texts (split by sha256 of id, val_fraction "
                   f"{spec.data.val_fraction}); the labeller learns {len(labelled.texts):,} human labels, the judge "
                   f"the other {len(unlabelled.texts):,}")


def sample(items: list, n: int, seed: int) -> list:
    return random.Random(seed).sample(items, min(n, len(items)))


def write_pairs(path: Path, pairs: list[dict]) -> None:
    """Atomic, as every artifact here."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        for p in pairs:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_pairs(path: Path) -> list[dict]:
    """The pairs of a preference JSONL (one object a line: prompt, chosen, rejected, each a string, the two answers
    non-empty); any fault is one error naming the file, the line and the field."""
    path = Path(path)
    if not path.is_file():
        raise PreferenceDataError(f"preference file {path} does not exist")
    pairs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise PreferenceDataError(f"{path}:{n}: not a JSON object ({e})") from None
        if not isinstance(row, dict):
            raise PreferenceDataError(f"{path}:{n}: expected an object with {', '.join(FIELDS)}")
        for field in FIELDS:
            if field not in row:
                raise PreferenceDataError(f"{path}:{n}: missing field {field!r} (a pair needs {', '.join(FIELDS)})")
            if not isinstance(row[field], str):
                raise PreferenceDataError(f"{path}:{n}: field {field!r} must be a string")
        for field in ("chosen", "rejected"):
            if not row[field].strip():
                raise PreferenceDataError(f"{path}:{n}: field {field!r} is an empty answer")
        pairs.append({k: row[k] for k in FIELDS})
    if len(pairs) < 4:
        raise PreferenceDataError(f"{path}: {len(pairs)} pairs; at least 4 are needed (training and held-out)")
    return pairs


def split_pairs(pairs: list[dict], heldout_fraction: float) -> tuple[list[dict], list[dict]]:
    """Held-out pairs by prompt (a hash), so the reward model is scored on prompts it never saw."""
    train, held = [], []
    for p in pairs:
        (held if in_val("pair:" + p["prompt"], heldout_fraction) else train).append(p)
    if not train or not held:
        k = max(1, int(len(pairs) * heldout_fraction))
        train, held = pairs[k:], pairs[:k]
    return train, held
