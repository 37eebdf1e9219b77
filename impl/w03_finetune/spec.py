"""What a hardware profile says about w03; validated when the profile is loaded."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from impl.core.corpora import DataSource
from impl.core.hf import HFTrainSpec
from impl.core.targets import Target


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SentimentData(DataSource):
    corpus: list[Literal["pang-lee"]] = []
    text_column: str = "text"
    label_column: str = "label"
    val_fraction: float = 0.1  # of the training split (hub) / of all sentences (offline), by sha256 of the id
    test_fraction: float = 0.1  # offline only: the hub dataset has its own test split
    max_train_examples: int | None = None  # the first N of the training split in hash order
    max_eval_examples: int | None = None  # cap on validation and test examples scored


class ClassifierSpec(Strict):
    data: SentimentData
    model: str  # hub id, local dir, or fixture:NAME of a pretrained encoder
    max_length: int
    train: HFTrainSpec


class StorySpec(Strict):
    prompts: list[str]
    max_new_tokens: int
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 0


class LMData(DataSource):
    corpus: list[Literal["austen", "brown"]] = []
    text_columns: list[str] = ["text"]  # hub: joined by a blank line (WritingPrompts: prompt, story)
    val_fraction: float = 0.1  # offline: documents held out, by sha256 of the document id
    max_train_docs: int | None = None  # hub: cap on training rows read (WritingPrompts has 272k)


class ClmSpec(Strict):
    data: LMData
    model: str
    block_size: int  # tokens per training sequence and per evaluation window (non-overlapping, stride = block)
    eval_tokens: int  # validation tokens scored before and after fine-tuning (the same tokens)
    freeze_embeddings: bool = False  # tied input/output embeddings kept fixed (cheaper on CPU)
    train: HFTrainSpec
    stories: StorySpec


class MlmSpec(Strict):
    data: LMData
    vocab_size: int  # WordPiece trained from scratch on the training split
    n_layer: int
    n_head: int
    n_embd: int
    seq_len: int
    dropout: float = 0.1  # hidden and attention dropout
    mask_probability: float = 0.15  # of which 80% [MASK], 10% a random token, 10% unchanged
    eval_sequences: int  # held-out sequences scored, masked with a fixed seed
    max_train_sequences: int | None = None
    train: HFTrainSpec


class W03Spec(Strict):
    classifier: ClassifierSpec
    clm: ClmSpec
    mlm: MlmSpec
    targets: dict[Literal["sentiment_accuracy", "clm_val_ppl", "mlm_accuracy"], Target]
