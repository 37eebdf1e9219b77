"""The one place where tests reach the implementations (as in Stanford CS336).

To check your own implementation against the suite, change what these functions call; the acceptance tests,
the fast tests and the benchmarks only ever go through here.
"""
from __future__ import annotations

from impl.core.artifacts import RunResult, Runs


# --- w01: GPT from scratch --------------------------------------------------------------------------------
def w01_model(vocab_size: int, context: int, n_layer: int, n_head: int, n_embd: int, dropout: float = 0.0):
    """A decoder-only LM: forward(idx, targets=None) -> (logits, loss)."""
    from impl.w01_gpt.model import GPT, GPTConfig

    return GPT(GPTConfig(vocab_size, context, n_layer, n_head, n_embd, dropout))


def w01_train(spec, runs: Runs, progress: bool = False) -> RunResult:
    """Train (or reuse / resume) the profile's w01 run; metrics include val_ppl, val_bpb and unigram_val_ppl."""
    from impl.w01_gpt import train

    return train.run(spec, runs.dir_for(spec.model_dump(exclude={"targets", "ddp_parity"})), progress=progress)


def w01_ddp_parity(spec, runs: Runs, skip_allreduce: bool = False) -> dict:
    """One process vs `ddp_parity.nproc` DDP processes with the same global batch; returns the differences."""
    from impl.w01_gpt import ddp_parity

    return ddp_parity.run(spec, runs, skip_allreduce=skip_allreduce)
