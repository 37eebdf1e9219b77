"""Questions with gold answers, and the documents they were asked about, for w11.

Offline: SQuAD v1.1 validation as OLMES samples it (the `squad` fixture: 1,000 questions, their Wikipedia
paragraphs, every reference answer), in the hub dataset's columns. Hub: a SQuAD-format dataset
(rajpurkar/squad), or its parquet files from `local_dir`.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass

from impl.core.corpora import DataError, hub_dataset
from impl.core.fixtures import fixture_path, origin as fixture_origin
from impl.w11_rag.spec import QAData


@dataclass
class Question:
    id: str
    question: str
    answers: list[str]
    doc_id: str


@dataclass
class QASet:
    documents: dict[str, str]  # doc_id -> text; every document is indexed
    questions: list[Question]  # every answerable question
    description: str

    def sample(self, n: int, seed: int) -> list[Question]:
        if n > len(self.questions):
            raise DataError(f"{n} questions asked for; the data has {len(self.questions)} answerable ones")
        return random.Random(seed).sample(self.questions, n)


def _doc_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _squad_rows(rows, origin: str) -> QASet:
    documents, questions = {}, []
    for r in rows:
        doc = _doc_id(r["context"])
        documents[doc] = r["context"]
        answers = [a for a in r["answers"]["text"] if a.strip()]
        if answers:
            questions.append(Question(str(r["id"]), r["question"].strip(), answers, doc))
    return QASet(documents, questions, f"{origin}: {len(documents):,} paragraphs, {len(questions):,} questions")


def _offline() -> QASet:
    with open(fixture_path("squad") / "validation.jsonl") as f:
        return _squad_rows((json.loads(line) for line in f), f"SQuAD v1.1 validation (OLMES's 1,000-question sample; "
                                                                  f"{fixture_origin('squad')})")


def _hub(data: QAData) -> QASet:
    ds, origin = hub_dataset(data.hub_path, data.hub_name, data.local_dir, (data.split,))
    rows = ds[data.split]
    missing = [c for c in ("id", "context", "question", "answers") if c not in rows.column_names]
    if missing:
        raise DataError(f"{origin}: not SQuAD format, no column(s) {missing}; it has {rows.column_names}")
    return _squad_rows(rows, f"{origin}, split {data.split}")


def load_qa(data: QAData) -> QASet:
    qa = _hub(data) if data.source == "hub" else _offline()
    if not qa.documents or not any(t.strip() for t in qa.documents.values()):
        raise DataError(f"{qa.description}: no documents to index")
    if not qa.questions:
        raise DataError(f"{qa.description}: no answerable questions")
    return qa
