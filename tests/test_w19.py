"""w19's sabotage twins (dedup passing everything fails the duplicates check, filters passing everything fail the
junk check, a tokenizer trained on the wrong data with a tiny vocabulary fails the bits-per-byte gap), bad input
(a malformed JSONL or WARC record, a corpus the filters empty, a corrupt SentencePiece model: one clear error
each, nothing half-written), the tokenizer recipe (lossless, split digits, byte fallback), the scoring on the
labelled set, and the gpu1 path shrunk onto this CPU (a FineWeb-format and a WikiText-format local directory)."""
import gzip
import json

import pytest

from impl import adapters
from impl.core.artifacts import Runs
from impl.core.profiles import load_profile, override
from impl.w19_data import pipeline, run, tokenizer
from impl.w19_data.pipeline import W19DataError
from impl.w19_data.spec import TokenizerSpec
from impl.w19_data.tokenizer import TokenizerError

CPU = load_profile("cpu").milestone("w19")
GPU1 = load_profile("gpu1").milestone("w19")
# the cpu protocol (its filters, dedup, tokenizer recipe, model) on a mix small enough for seconds
SMALL_MIX = {"mails": 20, "gcide": 20, "fortunes": 40, "austen_chapters": 10, "brown_documents": 10,
             "exact_duplicates": 4, "near_duplicates": 4, "junk": 16}


@pytest.fixture
def runs(tmp_path):
    return Runs("w19", "test", root=tmp_path / "artifacts")


# --- the sabotage twins ----------------------------------------------------------------------------------------
def test_dedup_that_passes_everything_fails_the_planted_duplicates_check(runs):
    spec = override(CPU, mix=SMALL_MIX)
    m = adapters.w19_clean(spec, runs, sabotage="passthrough_dedup").metrics
    target = CPU.targets["dedup_f1"]
    assert m["dedup"]["groups_scored"] >= 6  # the planted pairs reached dedup
    assert not target.passes(target.checked_value(m["dedup"]["f1"])), m["dedup"]
    assert m["report"]["removed_ids"]["minhash_dedup"] == [] and m["report"]["removed_ids"]["exact_dedup"] == []


def test_filters_that_pass_everything_fail_the_junk_check(runs):
    spec = override(CPU, mix=SMALL_MIX)
    m = adapters.w19_clean(spec, runs, sabotage="passthrough_filters").metrics
    target = CPU.targets["filter_f1"]
    assert m["filters"]["junk"] == 16
    assert not target.passes(target.checked_value(m["filters"]["f1"])), m["filters"]


def test_a_tokenizer_trained_on_the_wrong_data_with_a_tiny_vocabulary_fails_the_bpb_gap(runs):
    """The cpu model, batch and learning rate for fewer steps, on the small mix; ours trained on junk, 384 pieces
    (256 of them bytes)."""
    spec = override(CPU, mix=SMALL_MIX, lm={"train": {"steps": 20}, "eval_bytes": 10000})
    m = adapters.w19_tokenizers(spec, runs, sabotage="wrong_data_tokenizer").metrics
    target = CPU.targets["bpb"]
    assert m["lm"]["sentencepiece"]["vocab_size"] <= 384
    ratio = target.checked_value(m["bpb"]["sentencepiece"], {"gpt2_bpe": m["bpb"]["gpt2_bpe"]})
    assert not target.passes(ratio), m["bpb"]


def test_models_that_do_not_learn_fail_the_beyond_unigram_check(runs):
    """Learning rate 0: each GPT stays at its initialisation, which knows less than token frequencies."""
    spec = override(CPU, mix=SMALL_MIX, lm={"train": {"steps": 2, "lr": 0.0, "min_lr": 0.0}, "eval_bytes": 10000})
    m = adapters.w19_tokenizers(spec, runs).metrics
    target = CPU.targets["lm_vs_unigram"]
    assert not target.passes(max(m["bpb_vs_unigram"].values())), m["bpb_vs_unigram"]


# --- bad input ---------------------------------------------------------------------------------------------------
def _raw(tmp_path, jsonl_lines=None, warc_bytes=None):
    raw = tmp_path / "raw"
    (raw / "jsonl").mkdir(parents=True)
    (raw / "jsonl" / "a.jsonl").write_text("\n".join(jsonl_lines or [json.dumps({"id": "ok", "text": "fine"})]) + "\n")
    if warc_bytes is not None:
        (raw / "warc").mkdir()
        (raw / "warc" / "a.warc.gz").write_bytes(warc_bytes)
    return raw


def test_a_malformed_jsonl_record_is_one_clear_error(tmp_path):
    raw = _raw(tmp_path, [json.dumps({"id": "a", "text": "fine"}), '{"id": "b", "text": "cut off'])
    with pytest.raises(W19DataError, match=r"a\.jsonl: line 2 is not valid JSON"):
        pipeline.validate_raw(raw)
    raw = _raw(tmp_path / "2", [json.dumps({"id": "a", "body": "no text field"})])
    with pytest.raises(W19DataError, match="line 1 is not a JSON object with a string 'text'"):
        pipeline.validate_raw(raw)


def test_a_malformed_warc_record_is_one_clear_error(tmp_path):
    with pytest.raises(W19DataError, match=r"a\.warc\.gz: WARC record 1 (is malformed|has no WARC-Record-ID)"):
        pipeline.validate_raw(_raw(tmp_path, warc_bytes=gzip.compress(b"WARC/1.0\r\nthis is not a header\r\n\r\n")))
    with pytest.raises(W19DataError, match="WARC record .* is malformed"):
        pipeline.validate_raw(_raw(tmp_path / "2", warc_bytes=b"\x1f\x8b\x08\x00garbage"))


def test_a_corpus_the_filters_empty_is_one_clear_error_and_nothing_is_written(runs):
    only_junk = {k: 0 for k in SMALL_MIX} | {"junk": 8}
    spec = override(CPU, mix=only_junk)
    with pytest.raises(W19DataError, match="every one of the 8 documents was removed by the filters"):
        adapters.w19_clean(spec, runs)
    run_dirs = list((runs.root / "w19" / "dataset" / "test").iterdir())
    assert len(run_dirs) == 1 and sorted(p.name for p in run_dirs[0].iterdir()) == ["config.json"]


def test_a_corrupt_sentencepiece_model_is_one_clear_error(tmp_path):
    model = tokenizer.train_sentencepiece(["The cat sat on the mat.\nA dog ran in the park. 12345"] * 50,
                                          TokenizerSpec(vocab_size=320), tmp_path / "tok")
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 3] + b"\xff" * 64)
    with pytest.raises(TokenizerError, match="is not a valid SentencePiece model"):
        adapters.w19_load_sentencepiece(model)
    with pytest.raises(TokenizerError, match="does not exist"):
        adapters.w19_load_sentencepiece(tmp_path / "missing.model")


# --- the tokenizer recipe, the scoring --------------------------------------------------------------------------
def test_our_tokenizer_is_lossless_splits_digits_and_falls_back_to_bytes(tmp_path):
    from impl.core.fixtures import read_documents

    texts = [d["text"] for d in read_documents("austen")[:8]]
    enc = adapters.w19_load_sentencepiece(tokenizer.train_sentencepiece(texts, TokenizerSpec(vocab_size=500),
                                                                        tmp_path / "tok"))
    text = "Mr. Darcy paid 1234 pounds.\n\n\tIndented, with two  spaces and 漢字."
    s = tokenizer.stats(enc, text)
    assert s["lossless"] and enc.decode(enc.encode(text)) == text
    pieces = [enc.decode([i]) for i in enc.encode("1234")]
    assert all(len(p.strip()) <= 1 for p in pieces)  # split_digits: one digit per piece
    assert s["byte_fallback_share"] > 0  # 漢字 is not in Austen: its UTF-8 bytes became byte pieces
    gpt2 = tokenizer.load_gpt2()
    assert gpt2.encode("Hello world") == [15496, 995] and tokenizer.stats(gpt2, text)["lossless"]


def test_dedup_and_filter_scores_on_the_labelled_set():
    labels = {"clean": ["a", "b", "c", "d"], "junk": {"j1": "symbols", "j2": "code"},
              "dup_groups": [["a", "a2"], ["b", "b2"]]}
    report = {"raw_ids": ["a", "a2", "b", "b2", "c", "d", "j1", "j2"],
              "dedup_input_ids": ["a", "a2", "b", "b2", "c", "j2"],
              "removed_ids": {"exact_dedup": ["a"], "minhash_dedup": ["c"]}}
    d = run.dedup_scores(labels, report)
    assert (d["tp"], d["fp"], d["fn"]) == (1, 1, 1)  # a's pair lost one (either member counts); b's none; c wrongly
    f = run.filter_scores(labels, report)
    assert (f["tp"], f["fp"], f["fn"]) == (1, 1, 1) and f["clean_removed"] == ["d"]


# --- the gpu1 path, shrunk ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fineweb_like_dirs(tmp_path_factory):
    """A FineWeb-format directory (train-*.parquet, a `text` column of web documents) and a WikiText-format one
    (validation-*.parquet, raw lines), from offline text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from impl.core.fixtures import read_documents

    web, wiki = tmp_path_factory.mktemp("fineweb"), tmp_path_factory.mktemp("wikitext")
    docs = [d["text"] for d in read_documents("brown")[:30]]
    pq.write_table(pa.table({"text": docs + docs[:3], "id": [f"w{i}" for i in range(33)]}),
                   web / "train-00000-of-00001.parquet")
    lines = [p + "\n" for d in read_documents("austen")[:2] for p in d["text"].split("\n\n")]
    pq.write_table(pa.table({"text": lines}), wiki / "validation-00000-of-00001.parquet")
    return web, wiki


@pytest.mark.gpu_smoke
def test_gpu1_path_runs_here_shrunk_on_local_fineweb_and_wikitext_directories(fineweb_like_dirs, runs):
    web, wiki = fineweb_like_dirs
    spec = override(GPU1, data={"local_dir": str(web), "eval_local_dir": str(wiki), "max_documents": 33},
                     pipeline={"tasks": 1, "shard_bytes": 65536},
                     tokenizer={"vocab_size": 400, "input_sentence_size": 0, "max_train_bytes": 200000},
                     lm={"model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "context": 32},
                         "train": {"steps": 3, "batch_size": 4, "grad_accum": 2, "log_every": 1}, "eval_bytes": 4000})
    assert GPU1.targets["bpb"].threshold == 1.10 and GPU1.tokenizer.vocab_size == 32000
    m = adapters.w19_tokenizers(spec, runs).metrics
    stages = {s["stage"]: s for s in m["cleaning"]["report"]["stages"]}
    assert stages["exact dedup"]["docs_in"] > stages["exact dedup"]["docs_out"]  # the repeated documents
    assert m["dataset"]["rows"] == stages["MinHash dedup"]["docs_out"] and m["dataset"]["shards"] >= 1
    assert "wikitext" in m["heldout"] and m["heldout_bytes"] <= 4000
    assert m["bpb"]["sentencepiece"] > 0 and m["bpb"]["gpt2_bpe"] > 0 and m["lm"]["gpt2_bpe"]["vocab_size"] == 50257
    ds = run.load_dataset(m["dataset"]["dir"])
    assert "text" in ds.column_names and len(ds) == m["dataset"]["rows"]


# --- the raw sources -------------------------------------------------------------------------------------------------
def test_the_raw_sources_hold_what_the_mix_relies_on():
    """SpamAssassin mails with headers and HTML, GCIDE entries in dictd markup, fortunes with real duplicates."""
    from collections import Counter

    from impl.core.fixtures import read_documents

    mails = read_documents("spam-assassin", "mails.jsonl")
    assert len(mails) == 6046 and sum("<html" in m["text"].lower() for m in mails) > 1000
    assert all(m["text"].startswith("From ") or "Received:" in m["text"][:2000] for m in mails[:50])
    gcide = read_documents("gcide", "entries.jsonl")
    assert len(gcide) > 10_000 and sum("[1913 Webster]" in g["text"] for g in gcide) > 5_000
    fortunes = read_documents("fortunes", "fortunes.jsonl")
    repeats = sum(n - 1 for n in Counter(f["text"] for f in fortunes).values() if n > 1)
    assert len(fortunes) > 14_000 and repeats > 50
