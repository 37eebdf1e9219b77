"""Prompts from the offline corpora, and preference pairs as a checked JSONL file.

A prompt is the opening `prompt_tokens` tokens of a sentence (a sentence long enough to hold prompt + answer);
its continuation in the book is the SFT demonstration. Chapters go wholly to the training side (SFT windows,
preference prompts, PPO prompts) or the test side (the prompts the RLHF and SFT policies are judged on) by a hash
of their id, so no test prompt was seen in any stage of training.
"""
from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

from impl.core.corpora import in_val
from impl.core.errors import MilestonesError
from impl.core.fixtures import read_documents

FIELDS = ("prompt", "chosen", "rejected")


class PreferenceDataError(MilestonesError, ValueError):
    pass


@dataclass
class Prompts:
    train: list[list[int]]  # token ids: prompt + answer_tokens of the book's own continuation
    test: list[list[int]]  # prompt tokens only
    description: str


def sentences(text: str) -> list[str]:
    text = re.sub(r"\s+", " ", text)
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", text) if s.strip()]


def load_prompts(spec, tokenizer) -> Prompts:
    """Every long-enough sentence of the corpora as token ids, training chapters and test chapters apart."""
    need = spec.prompt_tokens + spec.answer_tokens
    train, test, docs = [], [], 0
    for name in spec.data.corpus:
        for doc in read_documents(name):
            docs += 1
            held_out = in_val(doc["id"], spec.data.val_fraction)
            sents = sentences(doc["text"])
            for ids in (tokenizer(sents)["input_ids"] if sents else []):  # one batched call a chapter: fast
                if len(ids) >= need:
                    (test if held_out else train).append(ids[:spec.prompt_tokens] if held_out else ids[:need])
    if not train or not test:
        raise PreferenceDataError(f"corpus {spec.data.corpus}: no sentences of >= {need} tokens on one side")
    return Prompts(train, test, f"{'+'.join(spec.data.corpus)}: openings ({spec.prompt_tokens} tokens) of sentences "
                                f"of >= {need} tokens; {len(train):,} training / {len(test):,} test sentences "
                                f"({docs} chapters/files split by sha256 of id, val_fraction {spec.data.val_fraction})")


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
