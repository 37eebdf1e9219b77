"""What a hardware profile says about w19; validated when the profile is loaded.

    w19:
      data: {source: offline}                 # the messy mix built from fixtures; or {source: hub, hub_path: ...}
      mix: {mails: 500, gcide: 800, ...}      # offline only: how much of each source, and what is planted
      pipeline: {minhash: {n_grams: 5, buckets: 14, hashes_per_bucket: 8}, ...}
      tokenizer: {vocab_size: 8192, model_type: unigram, byte_fallback: true, split_digits: true, ...}
      lm: {model: {...}, train: {steps: 0, ...}, train_bytes: 1000000, eval_bytes: 100000}   # once per tokenizer
      targets: {byte_ppl_ratio: ..., dedup_f1: ..., lsh_curve_deviation: ..., filter_f1: ..., lm_vs_unigram: ...}
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from impl.core.targets import Target
from impl.w01_gpt.spec import ModelSpec, TrainSpec


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(Strict):
    """offline: a raw mix built from fixtures (WARC + JSONL, planted duplicates and junk with labels).
    hub: a web-text dataset (`hub_path`/`hub_name`, streamed; or `local_dir` of train-*.parquet with a `text`
    column) for the documents, and an evaluation dataset (WikiText-2) for the held-out text."""
    source: Literal["offline", "hub"]
    hub_path: str | None = None  # e.g. HuggingFaceFW/fineweb
    hub_name: str | None = None  # e.g. sample-10BT
    local_dir: str | None = None
    max_documents: int = 0  # hub: the first N documents (0: none: an error for source hub)
    eval_hub_path: str | None = None  # e.g. Salesforce/wikitext
    eval_hub_name: str | None = None  # e.g. wikitext-2-raw-v1
    eval_local_dir: str | None = None  # a directory of validation-*.parquet with a `text` column
    eval_split: str = "validation"
    heldout_fraction: float = 0.1  # offline: cleaned documents held out (by sha256 of id) for bits per byte

    @model_validator(mode="after")
    def _fields(self):
        if self.source == "hub":
            if not (self.hub_path or self.local_dir) or self.max_documents <= 0:
                raise ValueError("source 'hub' needs 'hub_path' (or 'local_dir') and 'max_documents' > 0")
            if not (self.eval_hub_path or self.eval_local_dir):
                raise ValueError("source 'hub' needs 'eval_hub_path' (or 'eval_local_dir') for the held-out text")
        return self


class MixSpec(Strict):
    """The offline raw mix: real sources plus planted items whose labels are known."""
    mails: int = 300  # SpamAssassin mails: HTML ones as WARC HTTP responses, the rest as JSONL with headers
    gcide: int = 400  # GCIDE entries (dictd markup)
    fortunes: int = 600  # fortune cookies (with their real duplicates)
    austen_chapters: int = 60  # clean long-form text (labelled clean); a third wrapped in HTML boilerplate
    brown_documents: int = 60
    clean_max_chars: int = 0  # each clean document's opening paragraphs up to this many characters (0: whole)
    exact_duplicates: int = 30  # planted: exact copies of clean documents
    # planted: copies whose 5-gram Jaccard similarity to their original is about each band (words replaced and a
    # header line), `near_duplicates_per_band` of each
    near_duplicate_bands: list[float] = [0.95, 0.85, 0.75, 0.65, 0.55]
    near_duplicates_per_band: int = 30
    junk: int = 64  # planted: junk documents of 8 kinds the filters target (symbols, repeated lines, word salad, ...)
    unseen_junk: int = 24  # planted: junk of 3 kinds no filter targets (spam bodies, shuffled sentences, empty pages)
    seed: int = 0


class MinhashSpec(Strict):
    n_grams: int = 5
    buckets: int = 14
    hashes_per_bucket: int = 8


class PipelineSpec(Strict):
    languages: list[str] = ["en"]  # py3langid labels kept
    language_threshold: float = 0.65  # py3langid normalised probability
    minhash: MinhashSpec = MinhashSpec()
    extraction_timeout_s: float = 10.0  # per document; trafilatura runs in datatrove's sandbox process
    tasks: int = 1  # datatrove tasks (and local workers) per stage
    shard_bytes: int = 1 << 20  # Parquet shard size of the output dataset
    examples_per_filter: int = 3  # removed examples per filter in the report


class TokenizerSpec(Strict):
    """SentencePiece's trainer options (https://github.com/google/sentencepiece/blob/master/doc/options.md)."""
    vocab_size: int
    model_type: Literal["unigram", "bpe"] = "unigram"
    byte_fallback: bool = True
    split_digits: bool = True
    character_coverage: float = 0.9995
    input_sentence_size: int = 2_000_000  # sentences sampled for training (0: all)
    max_train_bytes: int = 0  # 0: every cleaned training byte


class LMSpec(Strict):
    """The w01 GPT, trained once per tokenizer with identical model, batch, seed and training text, each for the
    same number of bytes: its steps are train_bytes / (batch x context x its tokenizer's bytes per token on the
    training text), so `train.steps` is 0 here."""
    model: ModelSpec
    train: TrainSpec
    train_bytes: int  # bytes of training text each model sees
    eval_bytes: int = 100_000  # held-out bytes scored: whole documents in a seeded order until this many (0: all)
    max_train_bytes: int = 0  # 0: every cleaned training byte

    @model_validator(mode="after")
    def _steps_from_bytes(self):
        if self.train_bytes <= 0 or self.train.steps != 0:
            raise ValueError("lm.train_bytes must be > 0 and lm.train.steps 0: each tokenizer's model trains for "
                             "the same bytes, in steps of its own tokens")
        return self


class W19Spec(Strict):
    data: DataSpec
    mix: MixSpec = MixSpec()
    pipeline: PipelineSpec = PipelineSpec()
    tokenizer: TokenizerSpec
    lm: LMSpec
    targets: dict[Literal["byte_ppl_ratio", "dedup_f1", "lsh_curve_deviation", "filter_f1", "lm_vs_unigram"], Target]
