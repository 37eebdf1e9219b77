"""w19's units, the reference implementations: near-duplicate detection with MinHash and LSH banding (what
datatrove's MinhashDedupSignature / MinhashDedupBuckets stages do inside the cleaning pipeline, pipeline.py) and
the tokenizer-independent score the two tokenizers' GPTs are compared by, bits per byte (lm.py calls it).

The pipeline keeps running datatrove's blocks; tests/units/test_w19_twins.py binds `minhash_signature` and
`lsh_candidate_pairs` to them (the same signatures, the same candidate clusters). Shapes: N documents, k = bands x
rows hash functions.
"""
from __future__ import annotations

import math
from typing import Callable

from impl.units import unit

MERSENNE_61 = (1 << 61) - 1  # the prime modulus of the permutations (datatrove's, and datasketch's)


@unit(rtol=0.0, atol=0.0)  # exact: integers
def minhash_signature(words: list[str], n: int, shingle_hash: Callable[[str], int], a: list[int],
                      b: list[int]) -> list[int]:
    """The MinHash signature of one document: its shingles are the " ".join of every n consecutive words
    (len(words) - n + 1 of them; none when the document has fewer than n words, and then the signature is []),
    each hashed to a 64-bit integer h by `shingle_hash` (a function str -> int in [0, 2^64)). Hash function j of
    the k = len(a) = len(b) is the permutation h -> ((a[j] h + b[j]) mod 2^64) mod (2^61 - 1) (the mod 2^64 is the
    wrap-around of unsigned 64-bit arithmetic, as in datatrove); signature[j] is its minimum over the shingles.
    -> k integers, each in [0, 2^61 - 1). (Exact: integers, no tolerance.)"""
    shingles = {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}
    hashes = [shingle_hash(s) for s in shingles]
    if not hashes:
        return []
    return [min(((aj * h + bj) % (1 << 64)) % MERSENNE_61 for h in hashes) for aj, bj in zip(a, b)]


@unit(rtol=0.0, atol=0.0)  # exact: a 0/1 adjacency matrix
def lsh_candidate_pairs(signatures: list[list[int]], bands: int, rows: int) -> list[tuple[int, int]]:
    """LSH banding: each of the N signatures (bands x rows values) is cut into `bands` bands of `rows` consecutive
    values (band i: values i*rows ... (i+1)*rows - 1); documents p < q are candidates when ALL `rows` values of at
    least one band are equal in both. -> the candidate pairs (p, q), p < q, sorted, each once. (Exact.)"""
    pairs = set()
    for band in range(bands):
        buckets: dict[tuple, list[int]] = {}
        for doc, sig in enumerate(signatures):
            buckets.setdefault(tuple(sig[band * rows:(band + 1) * rows]), []).append(doc)
        for docs in buckets.values():
            pairs.update((p, q) for i, p in enumerate(docs) for q in docs[i + 1:])
    return sorted(pairs)


@unit(rtol=1e-6, atol=0.0)  # float32 arithmetic passes; a wrong formula is off by 30% or more
def bits_per_byte(loss: float, n_tokens: int, n_bytes: int) -> float:
    """Bits per byte of a text: `loss` is the mean negative log-likelihood in nats per scored token over the
    n_tokens tokens scored, which cover the text's n_bytes UTF-8 bytes; the total nats (loss x n_tokens) in bits
    (/ ln 2) per byte (/ n_bytes). (A total of nats is passed as loss with n_tokens = 1.) -> a float."""
    return loss * n_tokens / math.log(2) / n_bytes
