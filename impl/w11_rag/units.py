"""w11's units, the reference implementations: splitting documents into overlapping chunks (what the index's
LangChain splitter does on plain text), retrieval recall@k (run.py calls it for every retriever and k), and
SQuAD's exact match and F1 (what the local `evaluate` squad metric computes, impl/core/metrics/squad).

The index keeps LangChain's RecursiveCharacterTextSplitter and the answers keep the `evaluate` metric;
tests/units/test_w11_twins.py binds `chunk_with_overlap` and `squad_em_f1` to them (the same chunks, the same
scores).
"""
from __future__ import annotations

import collections
import re
import string

from impl.units import unit


@unit(rtol=0.0, atol=0.0)  # exact: lengths and CRC-32s of strings
def chunk_with_overlap(text: str, size: int, overlap: int) -> list[str]:
    """Plain text (words separated by spaces, every word shorter than `size`) -> chunks of at most `size`
    characters that break only between words, neighbours sharing up to `overlap` characters of whole words.
    The text is cut before every space into pieces (the first word, then " word", " word", ...; empty pieces
    dropped). Pieces are packed greedily: a piece that would take the chunk's length (its pieces' lengths summed)
    past `size` closes the chunk; the next chunk starts from the closed chunk's longest run of LAST pieces whose
    length is at most `overlap` and which still leaves room for the new piece within `size`. Each chunk is its
    pieces joined, leading and trailing whitespace stripped (a chunk left empty is dropped). -> the chunks, in
    order. (Exact: strings.)"""
    words = text.split(" ")
    pieces = [p for p in [words[0]] + [" " + w for w in words[1:]] if p]
    chunks, current = [], []
    for piece in pieces:
        if current and sum(map(len, current)) + len(piece) > size:
            chunks.append("".join(current).strip())
            while current and (sum(map(len, current)) > overlap or sum(map(len, current)) + len(piece) > size):
                current.pop(0)
        current.append(piece)
    if current:
        chunks.append("".join(current).strip())
    return [c for c in chunks if c]


@unit(rtol=1e-6, atol=1e-9)  # a mean in float32 passes; a wrong rule is off by 1/Q = 0.2 or more
def recall_at_k(retrieved: list[list[dict]], doc_ids: list[str], answers: list[list[str]], k: int) -> float:
    """Retrieval recall@k over Q questions: retrieved[i] is question i's ranked chunks (best first), each a dict
    with "doc_id" (the document it was cut from) and "text"; doc_ids[i] is the document the question was asked on
    and answers[i] its gold answers. A chunk is gold for question i when it comes from document doc_ids[i] AND
    its text contains one of answers[i] verbatim. -> the fraction of the Q questions with a gold chunk among their
    first k retrieved (a float in [0, 1])."""
    def gold(chunk: dict, doc_id: str, golds: list[str]) -> bool:
        return chunk["doc_id"] == doc_id and any(a in chunk["text"] for a in golds)

    return sum(any(gold(c, d, g) for c in hits[:k]) for hits, d, g in zip(retrieved, doc_ids, answers)) \
        / len(retrieved)


def _normalize(s: str) -> str:
    """SQuAD v1.1's answer normalisation: lower case, punctuation removed, articles a/an/the removed, whitespace
    collapsed to single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


@unit(rtol=1e-6, atol=1e-9)  # F1 in another order or in float32 passes; the twins are off by 0.1 or more
def squad_em_f1(prediction: str, golds: list[str]) -> tuple[float, float]:
    """SQuAD v1.1's scores of one predicted answer against its question's gold answers (one or more). Both are
    normalised (lower case; punctuation, as in Python's string.punctuation, removed; the words a, an, the removed;
    whitespace collapsed). Exact match: 1.0 when the normalised prediction equals a normalised gold answer, else
    0.0. F1 against one gold answer: over their normalised whitespace tokens, common = the size of the multiset
    intersection (a token counts as often as it occurs in both), precision = common / prediction tokens, recall =
    common / gold tokens, F1 = 2 precision recall / (precision + recall), 0.0 when common is 0. Each score is the
    best over the gold answers. -> (exact_match, f1), each in [0, 1]."""
    def f1(pred: str, gold: str) -> float:
        p, g = _normalize(pred).split(), _normalize(gold).split()
        common = sum((collections.Counter(p) & collections.Counter(g)).values())
        if common == 0:
            return 0.0
        precision, recall = common / len(p), common / len(g)
        return 2 * precision * recall / (precision + recall)

    return (max(float(_normalize(prediction) == _normalize(g)) for g in golds),
            max(f1(prediction, g) for g in golds))
