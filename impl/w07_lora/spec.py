"""What a hardware profile says about w07; validated when the profile is loaded.

    w07:
      data: {source: offline, corpus: [alpaca-eval], max_train_examples: 200, eval_examples: 40}
      model: fixture:smollm2
      max_length: 192
      lora: {r: 16, alpha: 32, dropout: 0.0, target_modules: all-linear}
      train: {steps: 30, batch_size: 8, lr: 1.0e-3, ...}
      generate: {max_new_tokens: 48, batch_size: 8}
      targets: {lora_rougeL: ..., qlora_rougeL: ...}    # one check per variant the profile names
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from impl.core.corpora import DataSource
from impl.core.hf import HFTrainSpec
from impl.core.targets import Target

VARIANTS = ("lora", "qlora")  # qlora: the base model quantised to 4-bit NF4 (bitsandbytes), LoRA on top


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InstructionData(DataSource):
    """Offline: AlpacaEval's instructions with their reference outputs (the `alpaca-eval` fixture), optionally only
    some of its subsets. Hub: an Alpaca-format dataset (instruction, input, output) with one `train` split."""
    corpus: list[Literal["alpaca-eval"]] = []
    subsets: list[Literal["selfinstruct", "oasst", "koala", "helpful_base", "vicuna"]] = []  # offline; [] = all
    instruction_column: str = "instruction"  # hub columns
    input_column: str = "input"
    output_column: str = "output"
    max_input_chars: int | None = None  # keep examples whose input and first reference fit a short context
    max_output_chars: int | None = None
    val_fraction: float = 0.1  # held out by sha256 of the example id, never trained on
    max_train_examples: int | None = None  # the first N training examples in hash order (None: all)
    eval_examples: int  # held-out examples scored before and after tuning (the first N in hash order)

    @model_validator(mode="after")
    def _offline_corpus(self):
        if self.source == "offline" and self.corpus != ["alpaca-eval"]:
            raise ValueError("source 'offline' needs corpus: [alpaca-eval]")
        return self


class LoraSpec(Strict):
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class GenerateSpec(Strict):
    """Greedy decoding, the same before and after tuning."""
    max_new_tokens: int = 64
    batch_size: int = 8


class W07Spec(Strict):
    data: InstructionData
    model: str  # hub id, local dir, or fixture:NAME of a causal LM with a chat template
    max_length: int  # prompt + response tokens in training; longer examples are dropped, not truncated
    lora: LoraSpec = LoraSpec()
    train: HFTrainSpec
    gradient_checkpointing: bool = False  # recompute activations in backward: memory for time (7B on one GPU)
    generate: GenerateSpec = GenerateSpec()
    examples_in_report: int = 10
    targets: dict[Literal["lora_rougeL", "qlora_rougeL"], Target]
