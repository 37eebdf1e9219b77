"""Token streams for w01: text splits -> tokenizer -> one token array per split, cached once per config.

Documents are joined with the end-of-text token. Batches are drawn by a generator seeded with (seed, step), so
the batch of every step is known in advance: a resumed run and a DDP run see exactly the same data.
"""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from impl.core.artifacts import config_hash
from impl.core.corpora import DataError
from impl.core.fixtures import cache_dir, fixture_path
from impl.w01_gpt.spec import DataSpec, TokenizerSpec

EOT = "<|endoftext|>"


@dataclass
class TokenData:
    train: np.ndarray
    val: np.ndarray
    val_bytes: int  # UTF-8 bytes of the validation text, for bits per byte
    vocab_size: int
    tokenizer_dir: Path
    description: str

    @property
    def val_bytes_per_token(self) -> float:
        return self.val_bytes / len(self.val)


def load_tokenizer(tokenizer_dir: Path):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_dir / "tokenizer.json"), eos_token=EOT)


def _build_tokenizer(spec: TokenizerSpec, train_texts: list[str], out: Path):
    if spec.kind == "gpt2":
        from transformers import GPT2TokenizerFast

        tok = GPT2TokenizerFast.from_pretrained(str(fixture_path("gpt2-tokenizer")))
        tok.backend_tokenizer.save(str(out / "tokenizer.json"))
    else:
        from tokenizers import ByteLevelBPETokenizer

        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(train_texts, vocab_size=spec.vocab_size, special_tokens=[EOT], show_progress=False)
        bpe.save(str(out / "tokenizer.json"))
    return load_tokenizer(out)


def _encode(tok, texts: list[str]) -> np.ndarray:
    eot = tok.convert_tokens_to_ids(EOT)
    ids = []
    for batch_start in range(0, len(texts), 64):
        for row in tok(texts[batch_start:batch_start + 64], add_special_tokens=False)["input_ids"]:
            ids.extend(row)
            ids.append(eot)
    return np.asarray(ids, dtype=np.int32)


def prepare(data: DataSpec, tokenizer: TokenizerSpec) -> TokenData:
    """`data`: w01's DataSpec or a subclass (w05 reads a document subset of a hub dataset)."""
    key = config_hash({"data": data.model_dump(exclude_none=True), "tokenizer": tokenizer.model_dump(), "v": 1})
    out = cache_dir() / "tokenized" / f"w01-{key}"
    if not (out / "meta.json").exists():
        splits = data.text_splits()
        # a private temporary directory: two processes (pytest-xdist workers) may build the same cache at once
        tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        tok = _build_tokenizer(tokenizer, splits.train, tmp)
        np.save(tmp / "train.npy", _encode(tok, splits.train))
        np.save(tmp / "val.npy", _encode(tok, splits.val))
        val_bytes = sum(len(t.encode("utf-8")) for t in splits.val)
        (tmp / "meta.json").write_text(json.dumps({
            "val_bytes": val_bytes, "vocab_size": len(tok), "description": splits.description}))
        try:
            tmp.rename(out)
        except OSError as e:
            # another process finished first (the target exists and is not empty): its copy is identical
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not (out / "meta.json").exists():
                raise DataError(f"cannot move the token cache {tmp} to {out}: {e}") from e
            shutil.rmtree(tmp)
    meta = json.loads((out / "meta.json").read_text())
    return TokenData(np.load(out / "train.npy"), np.load(out / "val.npy"), meta["val_bytes"],
                     meta["vocab_size"], out, meta["description"])


def batch(tokens: np.ndarray, seed: int, step: int, batch_size: int, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of one optimizer step: `batch_size` random windows, fixed by (seed, step)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, len(tokens) - context - 1, (batch_size,), generator=g).numpy()
    x = np.stack([tokens[s:s + context] for s in starts])
    y = np.stack([tokens[s + 1:s + 1 + context] for s in starts])
    return torch.from_numpy(x).long(), torch.from_numpy(y).long()


def unigram_ppl(train: np.ndarray, val: np.ndarray, vocab_size: int, max_tokens: int | None = None) -> float:
    """The trivial baseline: each validation token scored by its add-one-smoothed training frequency, over the
    tokens the model is scored on (the first `max_tokens` targets when the profile limits them)."""
    if max_tokens is not None:
        val = val[:max_tokens + 1]
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return math.exp(-logp[val[1:]].mean())
