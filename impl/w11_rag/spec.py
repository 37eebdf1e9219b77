"""What a hardware profile says about w11; validated when the profile is loaded.

    w11:
      data: {source: offline, corpus: [squad]}          # or {source: hub, hub_path: rajpurkar/squad}
      questions: 120                                    # answerable questions scored, a seeded sample
      chunks: {size: 600, overlap: 100}
      embedding_model: fixture:minilm
      reader: fixture:smollm2
      retrieve_k: 3
      read: {span_words: 4, sentences: 2, max_new_tokens: 24, max_prompt_tokens: 1024}
      targets: {f1: ..., recall_at_k: ...}
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from impl.core.corpora import DataSource
from impl.core.targets import Target


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QAData(DataSource):
    """Offline: the `squad` fixture (SQuAD v1.1 validation, 1,000 questions with their paragraphs). Hub: a
    SQuAD-format dataset (id, title, context, question, answers.text) and its `split`."""
    corpus: list[Literal["squad"]] = []
    split: str = "validation"


class ChunkSpec(Strict):
    """langchain-text-splitters' RecursiveCharacterTextSplitter, in characters."""
    size: int = 600
    overlap: int = 100


class ReadSpec(Strict):
    """How the reader answers (impl/w11_rag/chain.py): with a context, the most probable span of 1 to `span_words`
    words in the `sentences` sentences sharing most words with the question; without one (closed-book), greedy
    decoding of at most `max_new_tokens`. A prompt longer than `max_prompt_tokens` loses context from its end,
    never the question."""
    span_words: int = 4
    sentences: int = 2
    max_new_tokens: int = 24
    max_prompt_tokens: int = 1024
    dtype: Literal["float32", "bfloat16"] = "float32"


class W11Spec(Strict):
    data: QAData
    max_documents: int | None = None  # index only the first N documents in sha256 order (None: all of them)
    questions: int  # answerable questions on indexed documents, scored; a sample drawn with the seed
    seed: int = 0
    chunks: ChunkSpec = ChunkSpec()
    embedding_model: str  # a sentence-transformers model: hub id, local dir, or fixture:NAME
    reader: str  # a causal LM with a chat template
    retrieve_k: int = 3
    read: ReadSpec = ReadSpec()
    examples_in_report: int = 8
    targets: dict[Literal["f1", "recall_at_k"], Target]
