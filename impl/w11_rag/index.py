"""The retrieval index as an artifact: chunks, their embeddings in FAISS, and a manifest that ties them together.

LangChain's `FAISS.save_local` pickles its docstore, and `load_local` unpickles it: a suite that loads artifacts
a user may have copied from elsewhere must not. So the index is written with faiss's own writer
(`index.faiss`), the chunks as JSON lines (`chunks.jsonl`), and `manifest.json` records the embedding model,
the dimension, the count and the sha256 of both files; loading checks all of them, then rebuilds LangChain's
store from those parts.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from impl.core.artifacts import write_json
from impl.core.errors import MilestonesError


class IndexError_(MilestonesError):
    """A missing, corrupt or mismatched index."""


INDEX_FILES = ("index.faiss", "chunks.jsonl", "manifest.json")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def embeddings(model_dir: str, batch_size: int = 64):
    """LangChain's Hugging Face embeddings over sentence-transformers, unit-normalised (inner product = cosine)."""
    from langchain_community.embeddings import HuggingFaceEmbeddings

    return HuggingFaceEmbeddings(model_name=model_dir, model_kwargs={"device": _device()},
                                 encode_kwargs={"normalize_embeddings": True, "batch_size": batch_size})


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def split_documents(documents: dict[str, str], size: int, overlap: int) -> list[dict]:
    """langchain-text-splitters' recursive splitter (paragraphs, lines, sentences, words); each chunk keeps its
    document's id."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter(chunk_size=size, chunk_overlap=overlap)
    chunks = []
    for doc_id in sorted(documents):
        for piece in splitter.split_text(documents[doc_id]):
            chunks.append({"id": f"{doc_id}/{len(chunks)}", "doc_id": doc_id, "text": piece})
    if not chunks:
        raise IndexError_("no chunks: every document is empty")
    return chunks


def build(documents: dict[str, str], out_dir: Path, model_dir: str, model_ref: str, size: int, overlap: int,
          progress: bool = False) -> dict:
    """Split, embed and write the index into `out_dir` (written beside, then renamed into place)."""
    import faiss
    import numpy as np

    chunks = split_documents(documents, size, overlap)
    emb = embeddings(model_dir)
    vectors = []
    step = 256
    try:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(chunks), desc="embedding chunks", unit="chunk", disable=not progress)
    except ImportError:  # pragma: no cover
        bar = None
    for start in range(0, len(chunks), step):
        vectors += emb.embed_documents([c["text"] for c in chunks[start:start + step]])
        if bar:
            bar.update(min(step, len(chunks) - start))
    if bar:
        bar.close()
    matrix = np.asarray(vectors, dtype="float32")
    index = faiss.IndexFlatIP(matrix.shape[1])  # exact search: the corpus is small, and recall is measured
    index.add(matrix)
    tmp = out_dir.with_name(out_dir.name + f".{os.getpid()}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(tmp / "index.faiss"))
    with open(tmp / "chunks.jsonl", "w") as f:
        for c in chunks:
            f.write(json.dumps(c, ensure_ascii=False) + "\n")
    manifest = {"embedding_model": model_ref, "dimension": int(matrix.shape[1]), "chunks": len(chunks),
                "documents": len(documents), "chunk_size": size, "chunk_overlap": overlap, "metric": "inner product "
                "of unit vectors (cosine), faiss.IndexFlatIP", "sha256": {n: _sha256(tmp / n) for n in INDEX_FILES[:2]}}
    write_json(tmp / "manifest.json", manifest)
    if out_dir.exists():
        import shutil
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return manifest


def load(index_dir: Path, model_dir: str, model_ref: str):
    """LangChain's FAISS store rebuilt from the index directory, after every check; one clear error otherwise."""
    import faiss
    from langchain_community.docstore.in_memory import InMemoryDocstore
    from langchain_community.vectorstores import FAISS
    from langchain_community.vectorstores.utils import DistanceStrategy
    from langchain_core.documents import Document

    index_dir = Path(index_dir)
    absent = [n for n in INDEX_FILES if not (index_dir / n).exists()]
    if absent:
        raise IndexError_(f"{index_dir}: not a w11 index, missing {', '.join(absent)}")
    try:
        manifest = json.loads((index_dir / "manifest.json").read_text())
        expected = manifest["sha256"]
    except (ValueError, KeyError) as e:
        raise IndexError_(f"{index_dir}/manifest.json is not a valid manifest ({e})") from None
    for name, digest in expected.items():
        if _sha256(index_dir / name) != digest:
            raise IndexError_(f"{index_dir}/{name}: sha256 does not match the manifest (changed or truncated "
                              f"since it was written); rebuild the index")
    if manifest.get("embedding_model") != model_ref:
        raise IndexError_(f"{index_dir}: built with {manifest.get('embedding_model')!r}, the profile embeds "
                          f"queries with {model_ref!r}; rebuild the index")
    try:
        index = faiss.read_index(str(index_dir / "index.faiss"))
    except RuntimeError as e:
        raise IndexError_(f"{index_dir}/index.faiss: faiss cannot read it ({str(e).splitlines()[0][:200]})") from None
    chunks = [json.loads(line) for line in (index_dir / "chunks.jsonl").read_text().splitlines()]
    if index.d != manifest["dimension"] or index.ntotal != len(chunks) or len(chunks) != manifest["chunks"]:
        raise IndexError_(f"{index_dir}: the index holds {index.ntotal} vectors of dimension {index.d}, the "
                          f"manifest says {manifest['chunks']} of {manifest['dimension']}, chunks.jsonl has "
                          f"{len(chunks)}")
    emb = embeddings(model_dir)
    query_dim = len(emb.embed_query("dimension check"))
    if query_dim != index.d:
        raise IndexError_(f"{index_dir}: vectors of dimension {index.d}, but {model_ref} embeds to {query_dim}")
    docstore = InMemoryDocstore({c["id"]: Document(page_content=c["text"], metadata={"doc_id": c["doc_id"],
                                                                                     "chunk_id": c["id"]})
                                 for c in chunks})
    store = FAISS(embedding_function=emb, index=index, docstore=docstore,
                  index_to_docstore_id={i: c["id"] for i, c in enumerate(chunks)},
                  distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT)
    return store, chunks, manifest
