"""w19's cases: MinHash signatures, LSH banding and bits per byte.

Signatures are integers up to 2^61: a float64 snapshot holds them exactly as two 32-bit halves."""
from __future__ import annotations

import hashlib
import random
import struct

import torch

from impl.units.cases import case


def sha1_64(s: str) -> int:
    """The first 8 bytes of the UTF-8 text's SHA-1, little-endian (datatrove's sha1 64-bit shingle hash)."""
    return struct.unpack("<Q", hashlib.sha1(s.encode("utf-8")).digest()[:8])[0]


def permutations(k: int, seed: int = 0) -> tuple[list[int], list[int]]:
    rng = random.Random(seed)
    p = (1 << 61) - 1
    return [rng.randrange(1, p) for _ in range(k)], [rng.randrange(0, p) for _ in range(k)]


def _halves(values: list[int]) -> dict:
    return {"hi": torch.tensor([v >> 32 for v in values], dtype=torch.float64),
            "lo": torch.tensor([v & 0xFFFFFFFF for v in values], dtype=torch.float64)}


def _words(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    vocab = ["cat", "sat", "on", "the", "mat", "dog", "ran", "far", "away", "from", "home", "and", "back", "again"]
    return [rng.choice(vocab) for _ in range(n)]


@case("w19.minhash_signature")
def _minhash(fn):
    a, b = permutations(16, seed=1)
    doc = _words(2, 40)
    near = doc[:25] + ["zebra"] + doc[26:]  # one word changed: most shingles shared
    out = {}
    for name, words, n in (("doc", doc, 5), ("near", near, 5), ("doc_3gram", doc, 3)):
        for half, v in _halves(fn(words, n, sha1_64, a, b)).items():
            out[f"{name}.{half}"] = v
    out["short_len"] = len(fn(["only", "four", "words", "here"], 5, sha1_64, a, b))  # fewer than n words: []
    # a permutation with a * h past 2^64: the wrap-around of unsigned 64-bit arithmetic shows
    for half, v in _halves(fn(["x"] * 3, 1, lambda s: (1 << 64) - 12345, [(1 << 61) - 2], [7])).items():
        out[f"wrap.{half}"] = v
    return out


def _adjacency(pairs, n: int) -> torch.Tensor:
    m = torch.zeros(n, n, dtype=torch.float64)
    for p, q in pairs:
        m[p, q] += 1  # a pair listed twice, or as (q, p), shows
    return m


@case("w19.lsh_candidate_pairs")
def _lsh(fn):
    bands, rows = 4, 3
    base = [10, 11, 12, 20, 21, 22, 30, 31, 32, 40, 41, 42]
    sigs = [
        base,                                                     # 0
        base[:3] + [0, 0, 0, 1, 1, 1, 2, 2, 2],                   # 1: band 0 equal to 0's
        [9, 9, 9, 9, 9, 9, 9, 9, 9] + base[9:],                   # 2: band 3 equal to 0's
        [10, 0, 0, 20, 0, 0, 30, 0, 0, 40, 0, 0],                 # 3: one row of every band equal to 0's, no whole band
        [5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5],                     # 4
        [5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6],                     # 5: bands 0, 1 equal to 4's
        [10, 11, 12, 20, 21, 22, 30, 31, 32, 40, 41, 43],         # 6: all but the last value equal to 0's
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],                  # 7: alone
        [0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2],                     # 8: bands 1, 2, 3 equal to 1's
    ]
    pairs = fn(sigs, bands, rows)
    return {"adjacency": _adjacency(pairs, len(sigs)), "count": len(pairs),
            "two_bands_of_6": _adjacency(fn(sigs, 2, 6), len(sigs))}


@case("w19.bits_per_byte")
def _bpb(fn):
    # (mean nats per token, tokens scored, UTF-8 bytes they cover): a tokenizer with ~4 bytes a token, one with 1.7
    cases = [(3.2, 1000, 4123), (2.1, 2400, 4123), (0.9, 1, 7), (5.55, 17, 77)]
    return {"bpb": torch.tensor([fn(loss, n, b) for loss, n, b in cases], dtype=torch.float64)}
