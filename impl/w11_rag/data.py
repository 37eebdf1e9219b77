"""Questions with gold answers, and the documents they were asked about, for w11.

Offline: BIG-bench `disfl_qa` (SQuAD 2.0's Wikipedia paragraphs; BIG-bench keeps one gold span per question and
its text space-tokenised, "Earth ' s"; SQuAD 2.0's unanswerable questions, answered "unknown", and answers not
found verbatim in their paragraph are dropped), or the Quoref subtask of natural_instructions (the passage is
the document). Hub: a SQuAD-format dataset (rajpurkar/squad), or its parquet files from `local_dir`.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass

from impl.core.corpora import DataError, hub_dataset
from impl.core.fixtures import fixture_path
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


def _disfl_qa() -> QASet:
    task = json.loads((fixture_path("bigbench-tasks") / "disfl_qa.json").read_text())
    documents, questions = {}, []
    for i, e in enumerate(task["examples"]):
        question, context = e["input"].split("\ncontext: ", 1)
        context, answer = context.strip(), e["target"].strip()
        doc = _doc_id(context)
        documents[doc] = context
        if answer.lower() != "unknown" and answer in context:
            questions.append(Question(f"disfl_qa/{i}", question.strip(), [answer], doc))
    return QASet(documents, questions, f"BIG-bench disfl_qa: {len(documents):,} SQuAD Wikipedia paragraphs, "
                                       f"{len(questions):,} answerable questions (disfluent, space-tokenised)")


def _quoref() -> QASet:
    documents, questions = {}, []
    with open(fixture_path("natural-instructions") / "subtask002_quoref_answer_generation.jsonl") as f:
        for line in f:
            e = json.loads(line)
            m = re.match(r"Passage:\s*(.*)\s*Question:\s*(.*)$", e["input"], re.S)
            if not m:
                continue
            passage, question = m.group(1).strip(), m.group(2).strip()
            doc = _doc_id(passage)
            documents[doc] = passage
            answers = [a for a in e["references"] if a and a in passage]
            if answers:
                questions.append(Question(e["id"], question, answers, doc))
    return QASet(documents, questions, f"natural_instructions Quoref: {len(documents):,} Wikipedia passages, "
                                       f"{len(questions):,} questions with span answers")


def _hub(data: QAData) -> QASet:
    ds, origin = hub_dataset(data.hub_path, data.hub_name, data.local_dir, (data.split,))
    rows = ds[data.split]
    missing = [c for c in ("id", "context", "question", "answers") if c not in rows.column_names]
    if missing:
        raise DataError(f"{origin}: not SQuAD format, no column(s) {missing}; it has {rows.column_names}")
    documents, questions = {}, []
    for r in rows:
        doc = _doc_id(r["context"])
        documents[doc] = r["context"]
        answers = [a for a in r["answers"]["text"] if a.strip()]
        if answers:
            questions.append(Question(str(r["id"]), r["question"].strip(), answers, doc))
    return QASet(documents, questions, f"{origin}, split {data.split}: {len(documents):,} paragraphs, "
                                       f"{len(questions):,} questions")


def load_qa(data: QAData) -> QASet:
    if data.source == "hub":
        qa = _hub(data)
    else:
        parts = [{"disfl-qa": _disfl_qa, "quoref": _quoref}[c]() for c in data.corpus]
        qa = QASet({k: v for p in parts for k, v in p.documents.items()}, [q for p in parts for q in p.questions],
                   "; ".join(p.description for p in parts))
    if not qa.documents or not any(t.strip() for t in qa.documents.values()):
        raise DataError(f"{qa.description}: no documents to index")
    if not qa.questions:
        raise DataError(f"{qa.description}: no answerable questions")
    return qa
