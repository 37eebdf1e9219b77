"""Shared pieces of the fast tests: profiles as specs, throw-away artifact roots, tiny WikiText- and Alpaca-format
dirs."""
from pathlib import Path

import pytest

from impl.core.artifacts import Runs
from impl.core.profiles import load_profile

TINY = Path(__file__).parent / "data" / "tiny.yaml"


@pytest.fixture
def tiny_spec():
    return load_profile(TINY).milestone("w01")


@pytest.fixture
def tmp_runs(tmp_path):
    return Runs("w01", "test", root=tmp_path / "artifacts")


@pytest.fixture(scope="session")
def wikitext_like_dir(tmp_path_factory):
    """What `datasets` fetches for Salesforce/wikitext (a `text` column of raw lines per split), in miniature,
    filled with real offline text so the tokenizer sees real words."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from impl.core.fixtures import read_documents

    docs = read_documents("austen")
    out = tmp_path_factory.mktemp("wikitext-2-raw-v1")
    for split, chunk in (("train", docs[:6]), ("validation", docs[6:8]), ("test", docs[8:10])):
        lines = [" = Chapter = \n", ""] + [p + "\n" for d in chunk for p in d["text"].split("\n\n")]
        pq.write_table(pa.table({"text": lines}), out / f"{split}-00000-of-00001.parquet")
    return out


@pytest.fixture(scope="session")
def alpaca_like_dir(tmp_path_factory):
    """What `datasets` fetches for tatsu-lab/alpaca (one train split: instruction, input, output, text), in
    miniature, built from real AlpacaEval rows."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from impl.core.fixtures import fixture_path

    out = tmp_path_factory.mktemp("alpaca")
    with open(fixture_path("alpaca-eval") / "instructions.jsonl") as f:
        rows = [json.loads(next(f)) for _ in range(60)]
    pq.write_table(pa.table({"instruction": [r["instruction"] for r in rows], "input": [r["input"] for r in rows],
                             "output": [r["references"][0] for r in rows], "text": ["" for _ in rows]}),
                   out / "train-00000-of-00001.parquet")
    return out


def tiny_llama_dir(out, hidden: int = 64, max_positions: int = 256) -> str:
    """A 2-layer llama with SmolLM2's tokenizer and chat template, saved in `out`: loads in a second, generates
    nonsense and scores near chance. The fast tests' stand-in for a real causal LM."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from impl.core.fixtures import fixture_path

    tok = AutoTokenizer.from_pretrained(fixture_path("smollm2"))
    tok.save_pretrained(out)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=max_positions, eos_token_id=tok.eos_token_id)).save_pretrained(out)
    return str(out)
