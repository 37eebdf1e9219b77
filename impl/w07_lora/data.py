"""Instruction data for w07: (instruction, input, references) examples, split into training and held-out by a
hash of each example's id, and turned into chat messages.

Offline: AlpacaEval's 805 instructions with their reference outputs (the `alpaca-eval` fixture: Alpaca's own
evaluation set, so training and held-out examples both come from it, split by hash). Hub: an Alpaca-format dataset
(`instruction`, `input`, `output`), or the same parquet files from `local_dir`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from impl.core.corpora import DataError, hub_dataset, in_val
from impl.core.fixtures import fixture_path, origin as fixture_origin
from impl.w07_lora.spec import InstructionData


@dataclass
class Example:
    id: str
    instruction: str
    input: str
    references: list[str]

    def prompt(self) -> list[dict]:
        """The user turn; the model's chat template adds the rest."""
        content = self.instruction if not self.input else f"{self.instruction}\n\n{self.input}"
        return [{"role": "user", "content": content}]

    def completion(self) -> list[dict]:
        return [{"role": "assistant", "content": self.references[0]}]


@dataclass
class InstructionSplits:
    train: list[Example]
    eval: list[Example]
    description: str


def _hash_order(examples: list[Example]) -> list[Example]:
    return sorted(examples, key=lambda e: hashlib.sha256(e.id.encode()).hexdigest())


def _fits(e: Example, data: InstructionData) -> bool:
    return (data.max_input_chars is None or len(e.instruction) + len(e.input) <= data.max_input_chars) and \
        (data.max_output_chars is None or len(e.references[0]) <= data.max_output_chars)


def _offline(data: InstructionData) -> list[Example]:
    with open(fixture_path("alpaca-eval") / "instructions.jsonl") as f:
        rows = [json.loads(line) for line in f]
    return [Example(r["id"], r["instruction"], r["input"], r["references"]) for r in rows
            if not data.subsets or r["dataset"] in data.subsets]


def _hub(data: InstructionData) -> list[Example]:
    ds, _ = hub_dataset(data.hub_path, data.hub_name, data.local_dir, ("train",))
    rows = ds["train"]
    missing = [c for c in (data.instruction_column, data.input_column, data.output_column) if c not in rows.column_names]
    if missing:
        raise DataError(f"{data.local_dir or data.hub_path}: no column(s) {missing}; it has {rows.column_names}")
    return [Example(f"{data.hub_path or 'local'}/{i}", r[data.instruction_column].strip(),
                    (r[data.input_column] or "").strip(), [r[data.output_column].strip()]) for i, r in enumerate(rows)]


def load_splits(data: InstructionData) -> InstructionSplits:
    examples = _offline(data) if data.source == "offline" else _hub(data)
    kept = _hash_order([e for e in examples if e.references and e.references[0] and _fits(e, data)])
    train = [e for e in kept if not in_val(e.id, data.val_fraction)][:data.max_train_examples]
    held_out = [e for e in kept if in_val(e.id, data.val_fraction)][:data.eval_examples]
    if not train or len(held_out) < data.eval_examples:
        raise DataError(f"{len(train)} training and {len(held_out)} held-out examples fit the limits "
                        f"(max_input_chars={data.max_input_chars}, max_output_chars={data.max_output_chars}); "
                        f"need training examples and eval_examples={data.eval_examples} held out")
    origin = (f"AlpacaEval ({', '.join(data.subsets) or 'all five subsets'}; {fixture_origin('alpaca-eval')})"
              if data.source == "offline"
              else f"{data.local_dir or data.hub_path} (Alpaca format)")
    return InstructionSplits(train, held_out, f"{origin}: {len(train):,} training examples, {len(held_out)} held out "
                                              f"(split by sha256 of example id, val_fraction={data.val_fraction})")
