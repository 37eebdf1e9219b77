"""What a hardware profile says about w01; validated when the profile is loaded."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from impl.core.corpora import DataSource, TextSplits, hub_splits, offline_splits
from impl.core.targets import Target


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(DataSource):
    corpus: list[Literal["austen", "brown"]] = []  # offline: fixture corpora, split by document
    val_fraction: float = 0.1

    def text_splits(self) -> TextSplits:
        if self.source == "offline":
            return offline_splits(self.corpus, self.val_fraction)
        return hub_splits(self.hub_path, self.hub_name, self.local_dir)  # the dataset's train/validation


class TokenizerSpec(Strict):
    kind: Literal["gpt2", "bpe"]  # gpt2: GPT-2's BPE from the fixture; bpe: byte-level BPE trained on the train split
    vocab_size: int | None = None  # bpe only

    @model_validator(mode="after")
    def _vocab(self):
        if self.kind == "bpe" and not self.vocab_size:
            raise ValueError("kind 'bpe' needs 'vocab_size'")
        return self


class ModelSpec(Strict):
    n_layer: int
    n_head: int
    n_embd: int
    context: int
    dropout: float = 0.0


class TrainSpec(Strict):
    steps: int
    batch_size: int  # sequences per optimizer step, across all processes and accumulation steps
    grad_accum: int = 1
    lr: float
    min_lr: float = 0.0
    warmup_steps: int = 0
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = 0
    nproc: int = 1  # processes per node; > 1 launches torchrun (DDP: NCCL on GPU, gloo on CPU)
    checkpoint_every: int = 100
    log_every: int = 10


class EvalSpec(Strict):
    stride: int  # evaluation window = model context; each window scores its last `stride` tokens
    max_tokens: int | None = None  # cap on validation tokens scored (None: the whole split)


class DDPParitySpec(Strict):
    nproc: int = 2
    steps: int = 4


class W01Spec(Strict):
    data: DataSpec
    tokenizer: TokenizerSpec
    model: ModelSpec
    train: TrainSpec
    eval: EvalSpec
    ddp_parity: DDPParitySpec | None = None
    targets: dict[Literal["val_ppl", "ddp_max_param_diff"], Target]
