"""w05's cases: ZeRO's partition of a flat tensor over the ranks, its inverse, and the per-rank memory formula."""
from __future__ import annotations

import torch

from impl.units.cases import case, randn as _randn

# (numel, ranks): 37 over 4 needs padding (to 40 = 10 per rank); 10 over 4 is padded to 16 by DeepSpeed's
# alignment of 2 per rank (4 each), to 12 by alignment 1 (3 each); 37 over 3 to 42 (14 each); 24 over 4 none
_LAYOUTS = [(37, 4), (10, 4), (37, 3), (24, 4)]


@case("w05.zero_partition")
def _zero_partition(fn):
    out = {}
    for n, N in _LAYOUTS:
        flat = _randn(n, seed=n + N) + 3.0  # no zeros: the padding shows
        for r in range(N):
            out[f"n{n}_N{N}/rank{r}"] = fn(flat, r, N)
    flat = _randn(10, seed=50) + 3.0
    for r in range(4):
        out[f"n10_N4_alignment1/rank{r}"] = fn(flat, r, 4, alignment=1)
    return out


def _partitions(flat: torch.Tensor, N: int, multiple: int) -> list[torch.Tensor]:
    """Built here, not with the unit zero_partition: a wrong zero_partition must not break zero_gather's case."""
    pad = -flat.numel() % multiple
    return list(torch.cat([flat, torch.zeros(pad)]).chunk(N))


@case("w05.zero_gather")
def _zero_gather(fn):
    out = {}
    for n, N in _LAYOUTS:
        flat = _randn(n, seed=100 + n + N)
        out[f"n{n}_N{N}"] = fn(_partitions(flat, N, 2 * N), n)
    flat = _randn(10, seed=150)
    out["n10_N4_alignment1"] = fn(_partitions(flat, 4, 4), 10)
    return out


@case("w05.zero_memory_per_rank")
def _zero_memory(fn):
    # the paper's example (7.5B parameters on 64 GPUs, Adam: K = 12), a small model on 8 ranks, and K = 16
    settings = [(7_500_000_000, 64, 12), (1_000_000, 8, 12), (125_000_000, 2, 16)]
    return {f"psi{psi}_N{N}_K{k}": torch.tensor([fn(psi, N, s, k) for s in range(4)], dtype=torch.float64)
            for psi, N, k in settings}
