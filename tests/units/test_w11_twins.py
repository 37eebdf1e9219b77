"""w11's unit tests are sharp (a plausible wrong unit fails its snapshot), and the units are the libraries the
milestone runs: on plain text `chunk_with_overlap` gives the chunks of the index's splitter (LangChain's
RecursiveCharacterTextSplitter, through index.split_documents), and `squad_em_f1` the per-example scores of the
`evaluate` squad metric run.py scores answers with (impl/core/metrics/squad)."""
import collections
import string

import pytest

from impl import units
from impl.units import check
from impl.units.cases.w11 import SQUAD_EXAMPLES, plain_text

ref = units.catalogue("w11")


def chunks_without_overlap(text, size, overlap):
    return ref["chunk_with_overlap"](text, size, 0)


def fixed_character_windows(text, size, overlap):
    return [text[i:i + size].strip() for i in range(0, len(text), size - overlap)]  # cuts words in half


def overlap_counted_in_words(text, size, overlap):
    # the last `overlap` WORDS repeated instead of up to `overlap` characters
    chunks, current = [], []
    for w in text.split():
        if current and len(" ".join(current + [w])) > size:
            chunks.append(" ".join(current))
            current = current[-overlap:] if overlap else []
            while current and len(" ".join(current + [w])) > size:
                current.pop(0)
        current.append(w)
    return chunks + [" ".join(current)] if current else chunks


def recall_any_chunk_of_the_right_document(retrieved, doc_ids, answers, k):
    return sum(any(c["doc_id"] == d for c in hits[:k]) for hits, d in zip(retrieved, doc_ids)) / len(retrieved)


def recall_answer_in_any_document(retrieved, doc_ids, answers, k):
    return sum(any(any(a in c["text"] for a in g) for c in hits[:k]) for hits, g in zip(retrieved, answers)) \
        / len(retrieved)


def recall_at_k_plus_one(retrieved, doc_ids, answers, k):
    return ref["recall_at_k"](retrieved, doc_ids, answers, k + 1)


def recall_against_the_first_answer_only(retrieved, doc_ids, answers, k):
    return ref["recall_at_k"](retrieved, doc_ids, [a[:1] for a in answers], k)


def _f1_raw(pred, gold):
    p, g = pred.split(), gold.split()
    common = sum((collections.Counter(p) & collections.Counter(g)).values())
    return 0.0 if common == 0 else 2 * common / (len(p) + len(g))


def squad_without_normalisation(prediction, golds):
    return max(float(prediction == g) for g in golds), max(_f1_raw(prediction, g) for g in golds)


def squad_against_the_first_gold_only(prediction, golds):
    return ref["squad_em_f1"](prediction, golds[:1])


def squad_f1_over_token_sets(prediction, golds):
    em, _ = ref["squad_em_f1"](prediction, golds)
    norm = lambda s: ref["squad_em_f1"].__globals__["_normalize"](s).split()  # noqa: E731

    def f1(g):
        p, r = set(norm(prediction)), set(norm(g))
        common = len(p & r)
        return 0.0 if common == 0 else 2 * common / (len(p) + len(r))
    return em, max(f1(g) for g in golds)


def squad_keeping_articles(prediction, golds):
    def norm(s):
        s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
        return " ".join(s.split())
    return (max(float(norm(prediction) == norm(g)) for g in golds),
            max(_f1_raw(norm(prediction), norm(g)) for g in golds))


TWINS = [
    ("chunk_with_overlap", chunks_without_overlap),
    ("chunk_with_overlap", fixed_character_windows),
    ("chunk_with_overlap", overlap_counted_in_words),
    ("recall_at_k", recall_any_chunk_of_the_right_document),
    ("recall_at_k", recall_answer_in_any_document),
    ("recall_at_k", recall_at_k_plus_one),
    ("recall_at_k", recall_against_the_first_answer_only),
    ("squad_em_f1", squad_without_normalisation),
    ("squad_em_f1", squad_against_the_first_gold_only),
    ("squad_em_f1", squad_f1_over_token_sets),
    ("squad_em_f1", squad_keeping_articles),
]


def test_every_unit_has_a_twin():
    assert {name for name, _ in TWINS} == set(units.catalogue("w11"))


@pytest.mark.parametrize("name,twin", TWINS, ids=[t.__name__ for _, t in TWINS])
def test_a_plausible_wrong_unit_fails_its_snapshot(name, twin):
    status, why = check.check("w11", name, twin)
    assert status != "pass", f"{twin.__name__} passed the {name} snapshot"


# ---- bound to the libraries the milestone runs -------------------------------------------------------------------
PLAIN = [(plain_text(s, n), size, overlap) for s, n, size, overlap in
         [(1, 400, 600, 100), (2, 120, 80, 30), (3, 60, 50, 0), (4, 300, 200, 199), (5, 500, 600, 100),
          (6, 40, 16, 5), (7, 200, 100, 50)]] + [
    ("one two three", 600, 100), ("  leading and trailing spaces  ", 12, 4), ("a b c d e f g h i j k", 3, 1)]


@pytest.mark.parametrize("text,size,overlap", PLAIN, ids=[f"{len(t)}c_{s}_{o}" for t, s, o in PLAIN])
def test_chunk_with_overlap_is_the_index_s_langchain_splitter_on_plain_text(text, size, overlap):
    """Plain text (words between spaces, no newlines, every word shorter than `size`): the recursive splitter's
    first separator found is " ", it keeps it at the start of each piece and merges the pieces greedily with
    its overlap rule, which is what the unit does. (Paragraph and line breaks, and words of `size` characters or
    more, which LangChain splits again with its next separators, are outside the unit's contract.)"""
    from impl.w11_rag.index import split_documents

    theirs = [c["text"] for c in split_documents({"d": text}, size, overlap)]
    assert ref["chunk_with_overlap"](text, size, overlap) == theirs


def test_the_chunks_overlap_and_fit():
    text, size, overlap = plain_text(1, 400), 600, 100
    chunks = ref["chunk_with_overlap"](text, size, overlap)
    assert len(chunks) > 3 and all(len(c) <= size for c in chunks)
    for left, right in zip(chunks, chunks[1:]):
        shared = max(n for n in range(overlap + 1) if left.endswith(right[:n]))
        assert 0 < shared <= overlap  # neighbours share whole words, at most `overlap` characters


def test_squad_em_f1_is_the_evaluate_squad_metric_run_py_scores_with():
    from impl.core.metrics import load_metric

    predictions, references = [p for p, _ in SQUAD_EXAMPLES], [g for _, g in SQUAD_EXAMPLES]
    extra = [("Beyoncé's 2003 album", ["Dangerously in Love", "her 2003 album"]), ("THE END.", ["end"]),
             ("an", ["a"]), ("  ", [""]), ("x y z", ["x y", "y z", "x y z w"])]
    predictions += [p for p, _ in extra]
    references += [g for _, g in extra]
    r = load_metric("squad").compute(predictions=predictions, references=references)
    ours = [ref["squad_em_f1"](p, g) for p, g in zip(predictions, references)]
    assert [em for em, _ in ours] == r["exact_match_per_example"]
    assert [f for _, f in ours] == r["f1_per_example"]  # exactly: the same arithmetic
