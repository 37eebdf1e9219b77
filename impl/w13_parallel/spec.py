"""What a hardware profile says about w13; validated when the profile is loaded.

    w13:
      model: {n_layer: 2, n_head: 4, n_embd: 32, context: 16, vocab_size: 64}
      parity: {steps: 3, batch_size: 8, seq_len: 16, lr: 1.0e-3, seed: 0, nproc: 2, micro_batches: 4}
      targets:
        tp_max_grad_diff: {direction: lower, threshold: 1.0e-5, protocol: "..."}
        pp_max_grad_diff: {direction: lower, threshold: 1.0e-5, protocol: "..."}
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from impl.core.targets import Target


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(Strict):
    """The w01 GPT (impl.w01_gpt.model.GPT) without dropout: dropout masks would differ between the layouts."""
    n_layer: int
    n_head: int
    n_embd: int
    context: int
    vocab_size: int  # the batches are random token ids: parity needs no corpus


class ParitySpec(Strict):
    steps: int = 4  # optimizer steps compared after the single forward/backward comparison
    batch_size: int = 8  # sequences per step; every layout sees the same global batch
    seq_len: int = 16
    lr: float = 1.0e-3
    optimizer: Literal["adamw", "sgd"] = "adamw"  # both elementwise: a sharded step equals the full step
    weight_decay: float = 0.0
    seed: int = 0
    nproc: int = 2  # tensor-parallel degree, and number of pipeline stages
    micro_batches: int = 4  # pipeline only
    schedule: Literal["gpipe", "1f1b"] = "gpipe"  # pipeline only
    timed_steps: int = 5  # after one warm-up step, for tokens/s and peak memory


class W13Spec(Strict):
    model: ModelSpec
    parity: ParitySpec
    targets: dict[Literal["tp_max_grad_diff", "pp_max_grad_diff"], Target]

    @model_validator(mode="after")
    def _layouts_fit(self):
        m, p = self.model, self.parity
        problems = []
        if m.n_embd % m.n_head:
            problems.append(f"model.n_embd={m.n_embd} must be divisible by model.n_head={m.n_head}")
        if p.nproc < 2:
            problems.append(f"parity.nproc={p.nproc}: a parallel layout needs at least 2 processes")
        elif m.n_head % p.nproc:  # tensor parallelism gives each rank whole attention heads
            problems.append(f"model.n_head={m.n_head} must be divisible by parity.nproc={p.nproc} "
                            "(tensor parallelism splits the heads across ranks)")
        if m.n_layer < p.nproc:
            problems.append(f"model.n_layer={m.n_layer} must be >= parity.nproc={p.nproc} (one block per stage at least)")
        if p.batch_size % p.micro_batches:
            problems.append(f"parity.batch_size={p.batch_size} must be a multiple of parity.micro_batches={p.micro_batches}")
        if p.micro_batches < p.nproc:  # Schedule1F1B refuses fewer; GPipe would be all bubble
            problems.append(f"parity.micro_batches={p.micro_batches} must be >= parity.nproc={p.nproc}")
        if p.timed_steps < 1 or p.steps < 1:
            problems.append("parity.steps and parity.timed_steps must be >= 1")
        if p.seq_len > m.context:
            problems.append(f"parity.seq_len={p.seq_len} exceeds model.context={m.context}")
        if problems:
            raise ValueError("; ".join(problems))
        return self
