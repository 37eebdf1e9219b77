"""What a hardware profile says about w05; validated when the profile is loaded.

    w05:
      data: {source: offline, corpus: [austen, brown], val_fraction: 0.1}     # or hub: OpenWebText, max_docs
      tokenizer: {kind: bpe, vocab_size: 4096}
      model: {n_layer: 4, n_head: 4, n_embd: 128, context: 128}               # the w01 GPT
      train: {steps: 150, batch_size: 32, grad_accum: 2, lr: 3.0e-3, nproc: 2, zero_stage: 2, precision: fp32}
      eval: {stride: 128}
      compare: {steps: 6, stages: [0, 1, 2, 3]}    # DDP and each ZeRO stage, same seed and global batch
      deepspeed: {zero_optimization: {stage3_param_persistence_threshold: 0}}  # merged into every config
      targets: {val_ppl: ..., zero2_ddp_max_loss_diff: ..., optimizer_state_ratio: ...}
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from impl.core.corpora import TextSplits, hub_document_splits
from impl.core.targets import Target
from impl.w01_gpt.spec import DataSpec as W01DataSpec
from impl.w01_gpt.spec import EvalSpec, ModelSpec, TokenizerSpec


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(W01DataSpec):
    """w01's data, plus a document subset of a one-split hub dataset (OpenWebText has only `train`)."""
    max_docs: int | None = None  # hub: the first N documents, split into train/val by `val_fraction`

    def text_splits(self) -> TextSplits:
        if self.source == "hub" and self.max_docs:
            return hub_document_splits(self.hub_path, self.hub_name, self.local_dir, self.max_docs, self.val_fraction)
        return super().text_splits()


class TrainSpec(Strict):
    steps: int
    batch_size: int  # sequences per optimizer step, over all processes and accumulation steps
    grad_accum: int = 1  # DeepSpeed's gradient_accumulation_steps; DDP accumulates under no_sync()
    lr: float
    min_lr: float = 0.0
    warmup_steps: int = 0
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: DeepSpeed's bf16 mode (fp32 master weights in ZeRO)
    seed: int = 0
    nproc: int = 1  # processes (GPUs) on this node, launched by torchrun
    zero_stage: Literal[0, 1, 2, 3] = 2
    log_every: int = 10


class CompareSpec(Strict):
    """Short runs with dropout off: plain DDP and each ZeRO stage on the same seed, batches and global batch."""
    steps: int = 6
    stages: list[Literal[0, 1, 2, 3]] = [0, 1, 2, 3]
    nproc: int = 2


class W05Spec(Strict):
    data: DataSpec
    tokenizer: TokenizerSpec
    model: ModelSpec
    train: TrainSpec
    eval: EvalSpec
    compare: CompareSpec | None = None
    deepspeed: dict[str, Any] = {}  # merged into every generated DeepSpeed config (impl/w05_deepspeed/configs)
    targets: dict[Literal["val_ppl", "zero2_ddp_max_loss_diff", "optimizer_state_ratio"], Target]

    @model_validator(mode="after")
    def _fits(self):
        problems = []
        t = self.train
        if t.batch_size % (t.nproc * t.grad_accum):
            problems.append(f"train.batch_size={t.batch_size} must be a multiple of train.nproc x train.grad_accum "
                            f"= {t.nproc} x {t.grad_accum}")
        if self.compare and t.batch_size % (self.compare.nproc * t.grad_accum):
            problems.append(f"train.batch_size={t.batch_size} must be a multiple of compare.nproc x train.grad_accum "
                            f"= {self.compare.nproc} x {t.grad_accum}")
        if self.model.n_embd % self.model.n_head:
            problems.append(f"model.n_embd={self.model.n_embd} must be divisible by model.n_head={self.model.n_head}")
        comparing = {"zero2_ddp_max_loss_diff", "optimizer_state_ratio"} & set(self.targets)
        if comparing and (not self.compare or 2 not in self.compare.stages):
            problems.append(f"targets {sorted(comparing)} need a 'compare' section whose stages include 2")
        if self.compare and self.compare.nproc < 2 and comparing:
            problems.append("compare.nproc must be >= 2: with one process there is nothing to partition")
        stage = (self.deepspeed.get("zero_optimization") or {}).get("stage")
        if stage is not None and stage != t.zero_stage:
            problems.append(f"deepspeed.zero_optimization.stage={stage} contradicts train.zero_stage={t.zero_stage}: "
                            "the run would use the first while its metrics report the second; set train.zero_stage")
        if problems:
            raise ValueError("; ".join(problems))
        return self
