"""The two tokenizers compared: our SentencePiece model trained on the cleaned data, and GPT-2's byte-level BPE
(the offline `gpt2-tokenizer` fixture). Both encode text losslessly, so bits per byte are comparable.

Recipe (the profile's `tokenizer:`): SentencePiece `model_type` (unigram by default), `byte_fallback` (a
character outside the vocabulary becomes its UTF-8 byte pieces <0x..> instead of <unk>), `split_digits` (every
digit its own piece), `character_coverage`, identity normalisation and no whitespace collapsing (so that decoding
gives the text back byte for byte), and newline and tab as user-defined pieces (the trainer reads text line by
line and would otherwise never see them).
"""
from __future__ import annotations

from pathlib import Path

from impl.core.errors import MilestonesError
from impl.w19_data.spec import TokenizerSpec


class TokenizerError(MilestonesError):
    pass


def train_sentencepiece(texts: list[str], spec: TokenizerSpec, out: Path) -> Path:
    """Train on `texts` (documents); writes `out`/sp.model and sp.vocab; returns the model path."""
    import sentencepiece as spm

    out.mkdir(parents=True, exist_ok=True)
    lines = (line for t in texts for line in t.split("\n") if line.strip())
    spm.SentencePieceTrainer.train(
        sentence_iterator=lines, model_prefix=str(out / "sp"), vocab_size=spec.vocab_size,
        model_type=spec.model_type, byte_fallback=spec.byte_fallback, split_digits=spec.split_digits,
        character_coverage=spec.character_coverage, input_sentence_size=spec.input_sentence_size,
        shuffle_input_sentence=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        user_defined_symbols=["\n", "\t"], unk_id=0, bos_id=-1, eos_id=1, pad_id=-1,
        hard_vocab_limit=False, num_threads=1, minloglevel=2, seed_sentencepiece_size=200_000)
    return out / "sp.model"


class Encoder:
    """encode(text) -> ids, the vocabulary size, the id that separates documents, and byte-piece ids."""

    def __init__(self, name: str, encode, vocab_size: int, eos_id: int, byte_ids: set[int], decode):
        self.name, self.encode, self.vocab_size, self.eos_id = name, encode, vocab_size, eos_id
        self.byte_ids, self.decode = byte_ids, decode


def load_sentencepiece(model_file: Path) -> Encoder:
    """Our SentencePiece model; a corrupt or missing file is one clear error."""
    import sentencepiece as spm

    if not Path(model_file).is_file():
        raise TokenizerError(f"SentencePiece model {model_file} does not exist")
    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(str(model_file))
    except Exception as e:  # sentencepiece raises OSError / RuntimeError with the protobuf parser's message
        raise TokenizerError(f"{model_file} is not a valid SentencePiece model ({type(e).__name__}: "
                             f"{str(e).strip()[:200]}); train it again (delete the run directory)") from None
    n = sp.GetPieceSize()
    return Encoder("sentencepiece", lambda t: sp.EncodeAsIds(t), n, sp.eos_id(),
                   {i for i in range(n) if sp.IsByte(i)}, lambda ids: sp.DecodeIds(list(ids)))


def load_gpt2() -> Encoder:
    from transformers import GPT2TokenizerFast

    from impl.core.fixtures import fixture_path

    tok = GPT2TokenizerFast.from_pretrained(str(fixture_path("gpt2-tokenizer")))
    backend = tok.backend_tokenizer  # the Rust tokenizer: no length warnings, no special-token handling
    return Encoder("gpt2_bpe", lambda t: backend.encode(t, add_special_tokens=False).ids, len(tok),
                   tok.eos_token_id, set(), lambda ids: tok.decode(list(ids)))


def stats(enc: Encoder, text: str) -> dict:
    """Fertility (tokens per whitespace-separated word), bytes per token, and the share of the text's bytes that
    fell back to byte pieces (GPT-2's byte-level BPE has no fallback: every byte is in its base alphabet)."""
    ids = enc.encode(text)
    n_bytes, n_words = len(text.encode("utf-8")), max(1, len(text.split()))
    byte_pieces = sum(1 for i in ids if i in enc.byte_ids)
    return {"tokens": len(ids), "bytes": n_bytes, "words": n_words, "fertility": len(ids) / n_words,
            "bytes_per_token": n_bytes / max(1, len(ids)), "byte_fallback_share": byte_pieces / max(1, n_bytes),
            "lossless": enc.decode(ids) == text}
