"""w11 end to end: index the documents, answer sampled questions three ways, score them.

    python -m impl train w11 --profile cpu     # builds (or reuses) the index, answers, writes metrics.json

1. The index (an artifact of its own, reused by every question sample): documents split by
   langchain-text-splitters, embedded by a sentence-transformers model, stored by faiss (see index.py).
2. Retrieval recall@k on the sampled questions (a retrieved chunk is gold when it comes from the question's own
   paragraph and contains a gold answer), for the dense retriever, BM25 (rank-bm25, same chunks, lower-cased
   word tokens) and a retriever returning k random chunks.
3. Answers, one question at a time through the same reader and prompt (chain.py): RAG (LangChain's chain; its
   retrieval and reading timed apart: the response time), closed-book (no context), random context (k random
   chunks: what any context buys without retrieval skill; the random-retriever twin's chain sees exactly these)
   and oracle (the gold paragraph); beside them the generator-free copy baseline (the retrieved chunks' sentence
   sharing most words with the question, whole); SQuAD v1.1 EM and F1.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path

from impl.core.artifacts import RunResult, Runs, environment, write_json
from impl.core.hf import resolve_model
from impl.core.metrics import load_metric
from impl.units import w11
from impl.w11_rag import chain, index
from impl.w11_rag.data import QASet, load_qa
from impl.w11_rag.spec import W11Spec

RECALL_KS = (1, 3, 5, 10)  # the table; the chain's own k is added
RETRIEVERS = ("dense", "bm25", "random")


def indexed_documents(spec: W11Spec, qa: QASet) -> dict[str, str]:
    ids = sorted(qa.documents, key=lambda d: hashlib.sha256(d.encode()).hexdigest())[:spec.max_documents]
    return {d: qa.documents[d] for d in ids}


def build_index(spec: W11Spec, runs: Runs, documents: dict[str, str], progress: bool = False) -> Path:
    """The index directory, built unless a complete one for the same documents and settings exists."""
    config = {"embedding_model": spec.embedding_model, "chunks": spec.chunks.model_dump(),
              "documents": hashlib.sha256(json.dumps(documents, sort_keys=True).encode()).hexdigest()}
    run_dir = runs.dir_for(config, name="index")
    if not (run_dir / "metrics.json").exists():
        start = time.time()
        manifest = index.build(documents, run_dir / "index", resolve_model(spec.embedding_model),
                               spec.embedding_model, spec.chunks.size, spec.chunks.overlap, progress)
        write_json(run_dir / "metrics.json", {**manifest, "build_seconds": round(time.time() - start, 1)})
    return run_dir


class Bm25Retriever:
    """Okapi BM25 (rank-bm25's defaults, k1 1.5, b 0.75) over the same chunks."""

    def __init__(self, chunks: list[dict]):
        from rank_bm25 import BM25Okapi

        self.chunks, self.bm25 = chunks, BM25Okapi([chain.word_tokens(c["text"]) or ["<empty>"] for c in chunks])

    def top(self, question: str, k: int) -> list[dict]:
        import numpy as np

        scores = self.bm25.get_scores(chain.word_tokens(question))
        return [self.chunks[i] for i in np.argsort(-scores, kind="stable")[:k]]


class RandomRetriever:
    """k chunks drawn uniformly: the no-skill retriever, and the sabotage twin's."""

    def __init__(self, chunks: list[dict], seed: int):
        self.chunks, self.rng = chunks, random.Random(seed)

    def top(self, question: str, k: int) -> list[dict]:
        return self.rng.sample(self.chunks, k)


def random_retriever_runnable(chunks: list[dict], seed: int, k: int):
    """The random retriever as a LangChain runnable, so the RAG chain itself can be sabotaged."""
    from langchain_core.documents import Document
    from langchain_core.runnables import RunnableLambda

    r = RandomRetriever(chunks, seed)
    return RunnableLambda(lambda q: [Document(page_content=c["text"], metadata={"doc_id": c["doc_id"],
                                                                               "chunk_id": c["id"]})
                                     for c in r.top(q, k)])


def _percentile(values: list[float], p: float) -> float:
    import numpy as np

    return float(np.percentile(values, p)) if values else float("nan")


def run(spec: W11Spec, runs: Runs, progress: bool = False, retriever: str = "dense") -> RunResult:
    """`retriever` "random" is the sabotage twin: the chain retrieves k random chunks."""
    if retriever not in ("dense", "random"):
        raise ValueError(f"retriever must be 'dense' or 'random'; got {retriever!r}")
    qa = load_qa(spec.data)
    documents = indexed_documents(spec, qa)
    eligible = QASet(documents, [q for q in qa.questions if q.doc_id in documents], qa.description)
    questions = eligible.sample(spec.questions, spec.seed)
    index_run = build_index(spec, runs.reusing(), documents, progress)
    run_dir = runs.dir_for({**spec.model_dump(exclude={"targets"}), "retriever": retriever,
                            "conditions": ["rag", "closed_book", "random_context", "oracle", "copy"]})
    if (run_dir / "metrics.json").exists():
        return RunResult(run_dir, json.loads((run_dir / "metrics.json").read_text()), reused=True)

    store, chunks, manifest = index.load(index_run / "index", resolve_model(spec.embedding_model),
                                         spec.embedding_model)
    ks = sorted({*RECALL_KS, spec.retrieve_k})
    k_max = max(ks)
    dense = store.as_retriever(search_kwargs={"k": k_max})
    bm25, rand = Bm25Retriever(chunks), RandomRetriever(chunks, spec.seed)
    by_id = {c["id"]: c for c in chunks}
    ranked = {"dense": [[by_id[d.metadata["chunk_id"]] for d in dense.invoke(q.question)] for q in questions],
              "bm25": [bm25.top(q.question, k_max) for q in questions],
              "random": [rand.top(q.question, k_max) for q in questions]}
    doc_ids, golds = [q.doc_id for q in questions], [q.answers for q in questions]
    recall = {name: {k: w11.recall_at_k(lists, doc_ids, golds, k) for k in ks} for name, lists in ranked.items()}

    reader = load_reader(spec)
    if retriever == "dense":
        chain_retriever = store.as_retriever(search_kwargs={"k": spec.retrieve_k})
    else:
        chain_retriever = random_retriever_runnable(chunks, spec.seed + 1, spec.retrieve_k)
    answer = chain.answer_chain(reader)
    from tqdm.auto import tqdm

    # every condition one question at a time through the same answer step; RAG as a user meets it, its two
    # steps timed apart
    retrieved, rag, retrieval_ms, reading_ms = [], [], [], []
    for q in tqdm(questions, desc="RAG", disable=not progress):
        t0 = time.perf_counter()
        docs = chain_retriever.invoke(q.question)
        t1 = time.perf_counter()
        rag.append(answer.invoke({"question": q.question, "context": docs}))
        retrieval_ms.append(1000 * (t1 - t0))
        reading_ms.append(1000 * (time.perf_counter() - t1))
        retrieved.append(docs)
    rag_truncated = len(reader.truncated)
    copy = [chain.copy_baseline({"question": q.question, "context": docs}) for q, docs in zip(questions, retrieved)]

    def answer_each(name: str, context_of) -> list[str]:
        return [answer.invoke({"question": q.question, "context": context_of(q)})
                for q in tqdm(questions, desc=name, disable=not progress)]

    closed = answer_each("closed-book", lambda q: None)
    if retriever == "random":  # the twin: its chain already answered with exactly the no-skill retriever's chunks
        random_context = rag
    else:
        no_skill = random_retriever_runnable(chunks, spec.seed + 1, spec.retrieve_k)  # the twin's draws, its order
        random_context = answer_each("random context", lambda q: no_skill.invoke(q.question))
    # the ceiling; the twin's check compares with its baselines only, and skips it
    oracle = answer_each("oracle", lambda q: documents[q.doc_id]) if retriever == "dense" else [None] * len(questions)

    squad = load_metric("squad")
    refs = [q.answers for q in questions]
    scores = {name: squad.compute(predictions=preds, references=refs)
              for name, preds in (("rag", rag), ("closed_book", closed), ("random_context", random_context),
                                  ("oracle", oracle), ("copy", copy)) if None not in preds}
    with open(run_dir / "answers.jsonl", "w") as f:
        for i, q in enumerate(questions):
            f.write(json.dumps({"id": q.id, "question": q.question, "answers": q.answers, "rag": rag[i],
                                "closed_book": closed[i], "random_context": random_context[i], "oracle": oracle[i],
                                "copy": copy[i], "retrieved": [d.metadata["chunk_id"] for d in retrieved[i]],
                                "rag_f1": scores["rag"]["f1_per_example"][i]}, ensure_ascii=False) + "\n")
    k, read = spec.retrieve_k, spec.read
    metrics = {
        "f1": scores["rag"]["f1"] / 100, "exact_match": scores["rag"]["exact_match"] / 100,
        **{f"{name}_{m}": scores[name][m] / 100 if name in scores else None
           for name in ("closed_book", "random_context", "oracle", "copy") for m in ("f1", "exact_match")},
        # the retriever the chain used (dense; random in the sabotage twin), at the chain's k
        "recall_at_k": w11.recall_at_k([[by_id[d.metadata["chunk_id"]] for d in docs] for docs in retrieved],
                                       doc_ids, golds, k),
        "bm25_recall_at_k": recall["bm25"][k], "random_recall_at_k": recall["random"][k],
        "recall": {name: {str(kk): v for kk, v in r.items()} for name, r in recall.items()},
        "k": k, "retriever": retriever,
        "latency_ms": {part: {"p50": _percentile(v, 50), "p95": _percentile(v, 95), "mean": sum(v) / len(v)}
                       for part, v in (("retrieval", retrieval_ms), ("reading", reading_ms),
                                       ("total", [a + b for a, b in zip(retrieval_ms, reading_ms)]))},
        "prompts_with_context_cut": rag_truncated, "questions": len(questions),
        "index": {**{key: manifest[key] for key in ("chunks", "documents", "dimension", "chunk_size", "chunk_overlap",
                                                    "metric", "embedding_model")},
                  "dir": str(index_run / "index"),
                  "build_seconds": json.loads((index_run / "metrics.json").read_text()).get("build_seconds")},
        "data": f"{qa.description}; {len(documents):,} paragraphs indexed ({manifest['chunks']:,} chunks), "
                f"{len(questions)} questions on them (seed {spec.seed} sample)",
        "reader": spec.reader, "embedding_model": spec.embedding_model,
        "reading": f"with a context: the most probable span (P(span, end of turn | prompt), {read.dtype}) of 1-"
                   f"{read.span_words} words in the {read.sentences} context sentences sharing most words with the "
                   f"question; closed-book: greedy, max {read.max_new_tokens} new tokens, first line; one prompt for "
                   f"every condition, <= {read.max_prompt_tokens} tokens (context cut from its end when longer); one "
                   f"question at a time",
        "examples": [{"question": q.question, "gold": q.answers[0], "rag": rag[i], "closed_book": closed[i],
                      "copy": copy[i], "oracle": oracle[i]} for i, q in enumerate(questions[:spec.examples_in_report])],
        "environment": environment(),
    }
    write_json(run_dir / "metrics.json", metrics)
    return RunResult(run_dir, metrics)


def load_reader(spec: W11Spec) -> chain.Reader:
    r = spec.read
    return chain.load_reader(resolve_model(spec.reader), r.max_new_tokens, r.max_prompt_tokens, r.span_words,
                             r.sentences, r.dtype)
