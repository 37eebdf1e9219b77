"""w11's cases: chunking with overlap, recall@k and SQuAD's EM/F1.

Chunks are strings: the snapshot holds each one's length and CRC-32 (exact in float64), which pins its text."""
from __future__ import annotations

import random
import zlib

import torch

from impl.units.cases import case


def plain_text(seed: int, n_words: int) -> str:
    """Words of 1 to 12 letters separated by single spaces, with a double space and sentence punctuation."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 12)))
             for _ in range(n_words)]
    for i in range(7, n_words, 9):
        words[i] += "."
    text = " ".join(words)
    return text[:50] + " " + text[50:]  # a run of two spaces somewhere


def _encode(chunks: list[str]) -> dict:
    return {"count": len(chunks), "lengths": torch.tensor([len(c) for c in chunks], dtype=torch.float64),
            "crc32": torch.tensor([zlib.crc32(c.encode("utf-8")) for c in chunks], dtype=torch.float64)}


@case("w11.chunk_with_overlap")
def _chunks(fn):
    out = {}
    for name, text, size, overlap in (("600_100", plain_text(1, 400), 600, 100), ("80_30", plain_text(2, 120), 80, 30),
                                      ("50_0", plain_text(3, 60), 50, 0), ("short", "one two three", 600, 100)):
        out.update({f"{name}.{k}": v for k, v in _encode(fn(text, size, overlap)).items()})
    return out


def _chunk(doc_id: str, text: str) -> dict:
    return {"doc_id": doc_id, "text": text}


def recall_questions():
    """Five questions with ranked chunks: gold first, gold third, the right document but a chunk without the
    answer, the answer's words in another document's chunk, and a gold chunk found through its second answer."""
    retrieved = [
        [_chunk("d1", "Paris is the capital of France."), _chunk("d2", "Berlin"), _chunk("d3", "x")],
        [_chunk("d9", "nothing"), _chunk("d4", "Spain"), _chunk("d2", "the river Seine flows"), _chunk("d2", "y")],
        [_chunk("d3", "Its population is large."), _chunk("d5", "1889"), _chunk("d3", "more of d3"),
         _chunk("d3", "built in 1889")],
        [_chunk("d8", "Marie Curie won twice"), _chunk("d6", "physics"), _chunk("d1", "z"), _chunk("d6", "w")],
        [_chunk("d7", "in the nineteenth century"), _chunk("d7", "it opened in 1900"), _chunk("d1", "q")],
    ]
    doc_ids = ["d1", "d2", "d3", "d6", "d7"]
    answers = [["Paris"], ["Seine", "the Seine"], ["1889"], ["Marie Curie"], ["19th century", "nineteenth century"]]
    return retrieved, doc_ids, answers


@case("w11.recall_at_k")
def _recall(fn):
    retrieved, doc_ids, answers = recall_questions()
    return {"recall": torch.tensor([fn(retrieved, doc_ids, answers, k) for k in (1, 2, 3, 4, 10)],
                                   dtype=torch.float64)}


SQUAD_EXAMPLES = [
    ("The  Denver Broncos!", ["Denver Broncos", "the broncos"]),
    ("Carolina", ["Carolina Panthers", "Panthers"]),
    ("a cat", ["the cat"]),
    ("Broncos", ["Denver Broncos", "Broncos"]),                     # exact only against the second gold answer
    ("in the year 1889", ["1889"]),
    ("Denver, Colorado (USA)", ["denver colorado usa"]),
    ("the the cat cat", ["cat"]),                                   # repeated tokens: a multiset, not a set
    ("Santa Clara", ["Levi's Stadium", "Santa Clara, California"]),
    ("", ["something"]),
    ("An apple a day", ["apple day"]),
]


@case("w11.squad_em_f1")
def _squad(fn):
    scores = [fn(p, g) for p, g in SQUAD_EXAMPLES]
    return {"em": torch.tensor([s[0] for s in scores], dtype=torch.float64),
            "f1": torch.tensor([s[1] for s in scores], dtype=torch.float64)}
