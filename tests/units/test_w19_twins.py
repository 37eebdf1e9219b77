"""w19's unit tests are sharp (a plausible wrong unit fails its snapshot), and the MinHash units are datatrove's:
on the same words, shingle hash and permutations `minhash_signature` gives the signature datatrove's
MinhashDedupSignature computes (exactly), and on a small corpus `lsh_candidate_pairs` over those signatures finds
the duplicate clusters datatrove's MinhashDedupBuckets stage writes (the pipeline's configuration: 5-grams,
14 bands of 8, sha1)."""
import math
import struct

import pytest

from impl import units
from impl.units import check

ref = units.catalogue("w19")
MERSENNE_61 = (1 << 61) - 1


def minhash_with_one_hash_function(words, n, shingle_hash, a, b):
    one = ref["minhash_signature"](words, n, shingle_hash, a[:1], b[:1])
    return one * len(a)  # k copies of the first function's minimum: k "hashes" that are one


def minhash_without_the_64_bit_wrap(words, n, shingle_hash, a, b):
    hashes = [shingle_hash(" ".join(words[i:i + n])) for i in range(len(words) - n + 1)]
    return [min((aj * h + bj) % MERSENNE_61 for h in hashes) for aj, bj in zip(a, b)] if hashes else []


def minhash_of_single_words(words, n, shingle_hash, a, b):
    return ref["minhash_signature"](words, 1, shingle_hash, a, b)  # unigram "shingles": n ignored


def lsh_with_one_band(signatures, bands, rows):
    return ref["lsh_candidate_pairs"](signatures, 1, bands * rows)  # the whole signature must agree


def lsh_any_row_of_a_band(signatures, bands, rows):
    pairs = set()
    for p in range(len(signatures)):
        for q in range(p + 1, len(signatures)):
            for band in range(bands):
                lo, hi = band * rows, (band + 1) * rows
                if any(x == y for x, y in zip(signatures[p][lo:hi], signatures[q][lo:hi])):
                    pairs.add((p, q))
    return sorted(pairs)


def lsh_strided_bands(signatures, bands, rows):
    # band i as values i, i + bands, i + 2 bands, ...: a different banding than datatrove's consecutive rows
    return ref["lsh_candidate_pairs"]([[s[j * bands + i] for i in range(bands) for j in range(rows)]
                                       for s in signatures], bands, rows)


def bits_per_token(loss, n_tokens, n_bytes):
    return loss * n_tokens / math.log(2) / n_tokens


def nats_per_byte(loss, n_tokens, n_bytes):
    return loss * n_tokens / n_bytes


def bits_per_byte_from_the_mean_alone(loss, n_tokens, n_bytes):
    return loss / math.log(2) / n_bytes


TWINS = [
    ("minhash_signature", minhash_with_one_hash_function),
    ("minhash_signature", minhash_without_the_64_bit_wrap),
    ("minhash_signature", minhash_of_single_words),
    ("lsh_candidate_pairs", lsh_with_one_band),
    ("lsh_candidate_pairs", lsh_any_row_of_a_band),
    ("lsh_candidate_pairs", lsh_strided_bands),
    ("bits_per_byte", bits_per_token),
    ("bits_per_byte", nats_per_byte),
    ("bits_per_byte", bits_per_byte_from_the_mean_alone),
]


def test_every_unit_has_a_twin():
    assert {name for name, _ in TWINS} == set(units.catalogue("w19"))


@pytest.mark.parametrize("name,twin", TWINS, ids=[t.__name__ for _, t in TWINS])
def test_a_plausible_wrong_unit_fails_its_snapshot(name, twin):
    status, why = check.check("w19", name, twin)
    assert status != "pass", f"{twin.__name__} passed the {name} snapshot"


# ---- bound to datatrove ---------------------------------------------------------------------------------------
def _datatrove_signature_step(tmp_path):
    from datatrove.pipeline.dedup import MinhashConfig, MinhashDedupSignature

    from impl.w19_data.pipeline import SHA1
    from impl.w19_data.spec import MinhashSpec

    m = MinhashSpec()  # the pipeline's configuration: 5-grams, 14 buckets of 8 hashes, sha1 64-bit
    config = MinhashConfig(n_grams=m.n_grams, num_buckets=m.buckets, hashes_per_bucket=m.hashes_per_bucket,
                           hash_config=SHA1)
    return MinhashDedupSignature(str(tmp_path / "sigs"), config), config


def _ours(step, config, text):
    """Our signature of `text`, given datatrove's word tokens (its text simplification and spaCy tokenizer), shingle
    hash and permutation parameters."""
    from datatrove.utils.hashing import create_hash_func
    from datatrove.utils.text import simplify_text

    words = step.word_tokenizer.word_tokenize(simplify_text(text, config.norm_config))
    a, b = step.parameters
    return ref["minhash_signature"](words, config.n_grams, create_hash_func(config.hash_config),
                                    a[0].tolist(), b[0].tolist())


BASE = [
    "The quick brown fox jumps over the lazy dog near the river bank while the farmer watches from his old red "
    "tractor in the morning sun and the birds sing in the tall green trees along the winding country road.",
    "Researchers at the university published a study on the migration of monarch butterflies, which travel "
    "thousands of miles every autumn from Canada to the mountain forests of central Mexico to spend the winter.",
    "To bake the bread, mix four cups of flour with yeast, salt and warm water, knead the dough for ten minutes, "
    "let it rise for an hour in a warm place, shape the loaf and bake it for forty minutes until golden brown.",
    "The city council voted on Tuesday to expand the public library, adding a new reading room, a children's "
    "section with picture books, and longer opening hours on weekends for students preparing for their exams.",
]


def _corpus() -> list[str]:
    docs = list(BASE)
    docs.append(BASE[0].replace("lazy dog", "lazy cat"))                                 # 4 ~ 0
    docs.append(BASE[1] + " The study was funded by a national science foundation grant.")  # 5 ~ 1
    docs.append(BASE[2].upper())                                                       # 6 = 2 after normalisation
    docs.append(BASE[2].replace("ten minutes", "ten  minutes!"))                       # 7 = 2 after normalisation
    docs.append(" ".join(BASE[3].split()[::-1]))                                       # 8: 3's words reversed
    return docs


def test_minhash_signature_is_datatrove_s(tmp_path):
    step, config = _datatrove_signature_step(tmp_path)
    for text in _corpus() + ["one two three four five", "Numbers 1, 22 and 333 are normalised to 0 here too."]:
        theirs = [h for bucket in step.get_signature(step.get_shingles(text)) for h in bucket]
        assert _ours(step, config, text) == theirs
    assert _ours(step, config, "only four words here") == [] and step.get_shingles("only four words here").size == 0


def _datatrove_pairs(tmp_path, docs: list[str]) -> set[tuple[int, int]]:
    """The duplicate pairs datatrove's stages 1 and 2 write for `docs` (one rank, one worker per bucket)."""
    from datatrove.data import Document
    from datatrove.pipeline.dedup import MinhashDedupBuckets

    step, config = _datatrove_signature_step(tmp_path)
    step.run(iter(Document(text=t, id=str(i)) for i, t in enumerate(docs)), rank=0, world_size=1)
    for bucket in range(config.num_buckets):
        MinhashDedupBuckets(str(tmp_path / "sigs"), str(tmp_path / "buckets"), config=config).run(
            rank=bucket, world_size=config.num_buckets)
    pairs = set()
    for f in sorted((tmp_path / "buckets").glob("*.dups")):
        raw = f.read_bytes()
        for _, d1, _, d2 in struct.iter_unpack("<4I", raw):
            pairs.add((min(d1, d2), max(d1, d2)))
    return pairs


def _components(pairs, n: int) -> list[frozenset]:
    parent = list(range(n))

    def root(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for p, q in pairs:
        parent[root(p)] = root(q)
    groups = {}
    for x in range(n):
        groups.setdefault(root(x), set()).add(x)
    return sorted(frozenset(g) for g in groups.values() if len(g) > 1)


def test_lsh_candidate_pairs_finds_datatrove_s_duplicate_clusters(tmp_path):
    """Exact where it can be: datatrove's bucket stage sorts each band's signatures and writes a pair for each two
    NEIGHBOURS with equal band values, so a group of m documents equal on a band gives m - 1 chained pairs where
    the unit lists all m (m - 1) / 2. Its pairs are therefore a subset of ours, the clusters (connected
    components, what MinhashDedupCluster keeps one document of) are the same, and where no band groups more than
    two documents the pairs are identical."""
    docs = _corpus()
    step, config = _datatrove_signature_step(tmp_path / "ours")
    ours = ref["lsh_candidate_pairs"]([_ours(step, config, t) for t in docs], config.num_buckets,
                                      config.hashes_per_bucket)
    theirs = _datatrove_pairs(tmp_path / "datatrove", docs)
    assert theirs <= set(ours)
    assert _components(ours, len(docs)) == _components(theirs, len(docs))
    assert {frozenset({0, 4}), frozenset({2, 6, 7})} <= set(_components(ours, len(docs)))  # the planted ones
    assert set(ours) - theirs == {(2, 7)}  # the {2, 6, 7} triple: its three pairs, datatrove's chain (2, 6), (6, 7)

    pairs_only = [docs[i] for i in (0, 1, 2, 3, 4, 5, 6, 8)]  # no document group larger than two
    step2, _ = _datatrove_signature_step(tmp_path / "ours2")
    ours2 = ref["lsh_candidate_pairs"]([_ours(step2, config, t) for t in pairs_only], config.num_buckets,
                                       config.hashes_per_bucket)
    assert set(ours2) == _datatrove_pairs(tmp_path / "datatrove2", pairs_only)
