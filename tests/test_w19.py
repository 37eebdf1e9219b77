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
SMALL_MIX = {"mails": 20, "gcide": 20, "fortunes": 40, "austen_chapters": 10, "brown_documents": 20,
             "exact_duplicates": 4, "near_duplicates_per_band": 2, "junk": 16, "unseen_junk": 6}


@pytest.fixture
def runs(tmp_path):
    return Runs("w19", "test", root=tmp_path / "artifacts")


@pytest.fixture
def shared_runs(tmp_path):
    """The dedup twins' runs: the extraction and filtering of the profile's mix made by the acceptance check moments
    before on this worker (or by the first twin) are copied, not run again; whatever follows them is the twin's."""
    return Runs("w19", "test", root=tmp_path / "artifacts", share=True)


# --- the sabotage twins ----------------------------------------------------------------------------------------
def test_exact_only_dedup_fails_the_duplicates_check_and_the_lsh_curve_on_the_profiles_mix(shared_runs):
    m = adapters.w19_clean(CPU, shared_runs, sabotage="exact_only_dedup").metrics
    d = m["dedup"]
    assert d["pairs_scored"] >= 150 and m["report"]["removed_ids"]["minhash_dedup"] == []
    for name, value in (("dedup_f1", d["f1"]), ("lsh_curve_deviation", d["lsh_curve_deviation"])):
        target = CPU.targets[name]
        assert not target.passes(target.checked_value(value)), (name, value, d["bands"])


def test_minhash_with_its_bands_and_rows_swapped_fails_the_lsh_curve_on_the_profiles_mix(shared_runs):
    """8 buckets of 14 hashes instead of 14 of 8: a curve that is steeper and lies further right."""
    m = adapters.w19_clean(CPU, shared_runs, sabotage="swapped_lsh_bands").metrics
    d = m["dedup"]
    assert d["pairs_scored"] >= 150 and m["report"]["removed_ids"]["minhash_dedup"]
    target = CPU.targets["lsh_curve_deviation"]
    assert not target.passes(target.checked_value(d["lsh_curve_deviation"])), d["bands"]


def test_filters_that_pass_everything_fail_the_junk_check_on_the_profiles_mix(runs):
    m = adapters.w19_clean(CPU, runs, sabotage="passthrough_filters").metrics
    target = CPU.targets["filter_f1"]
    assert m["filters"]["junk"] == CPU.mix.junk + CPU.mix.unseen_junk
    assert not target.passes(target.checked_value(m["filters"]["f1"])), m["filters"]


def test_a_tokenizer_trained_on_the_wrong_data_with_a_tiny_vocabulary_fails_the_per_byte_perplexity_ratio(runs):
    """The cpu model, batch and learning rate on fewer bytes, on the small mix; ours trained on junk, 384 pieces
    (256 of them bytes)."""
    spec = override(CPU, mix=SMALL_MIX, lm={"train_bytes": 60000, "eval_bytes": 10000})
    m = adapters.w19_tokenizers(spec, runs, sabotage="wrong_data_tokenizer").metrics
    target = CPU.targets["byte_ppl_ratio"]
    assert m["lm"]["sentencepiece"]["vocab_size"] <= 384
    assert m["lm"]["sentencepiece"]["steps"] > m["lm"]["gpt2_bpe"]["steps"]  # the same bytes in shorter tokens
    assert abs(m["lm"]["sentencepiece"]["train_bytes_seen"] / m["lm"]["gpt2_bpe"]["train_bytes_seen"] - 1) < 0.1
    assert not target.passes(target.checked_value(m["byte_ppl_ratio"])), m["bpb"]


def test_models_that_do_not_learn_fail_the_beyond_unigram_check(runs):
    """Learning rate 0: each GPT stays at its initialisation, which knows less than token frequencies."""
    spec = override(CPU, mix=SMALL_MIX, lm={"train": {"lr": 0.0, "min_lr": 0.0}, "train_bytes": 8000,
                                            "eval_bytes": 10000})
    m = adapters.w19_tokenizers(spec, runs).metrics
    target = CPU.targets["lm_vs_unigram"]
    assert not target.passes(max(m["bpb_vs_unigram"].values())), m["bpb_vs_unigram"]


def test_a_dedup_twin_copies_its_checks_filtering_and_reports_what_a_fresh_run_reports(tmp_path, monkeypatch):
    """The filter stage is run once per mix and filters: a twin differing only in dedup copies it, and its report,
    dedup and filter scores are those of a run that extracted and filtered again."""
    spec = override(CPU, mix=SMALL_MIX)
    stages_run = []
    run_stage = pipeline._run
    monkeypatch.setattr(pipeline, "_run", lambda name, *a, **k: (stages_run.append(name), run_stage(name, *a, **k)))
    shared = Runs("w19", "test", root=tmp_path / "check", share=True)
    adapters.w19_clean(spec, shared)
    stages_run.clear()
    twin = adapters.w19_clean(spec, shared, sabotage="swapped_lsh_bands").metrics
    assert "filter" not in stages_run and "minhash-1" in stages_run
    fresh = adapters.w19_clean(spec, Runs("w19", "test", root=tmp_path / "fresh"), sabotage="swapped_lsh_bands").metrics
    assert "filter" in stages_run[stages_run.index("minhash-4") + 1:]
    for m in (twin, fresh):  # the raw input's compressed size: warcio stamps each record with the time it wrote it
        assert m["report"]["stages"][0]["stage"].startswith("read") and m["report"]["stages"][0].pop("bytes_out")
    for key in ("report", "dedup", "filters", "labels"):
        assert twin[key] == fresh[key], key
    # the filters passing everything are another stage: never copied from the real filters' run
    stages_run.clear()
    passthrough = adapters.w19_clean(spec, shared, sabotage="passthrough_filters").metrics
    assert "filter" in stages_run and not any(passthrough["report"]["removed_ids"][f] for f in pipeline.FILTERS)


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
    only_junk = {k: 0 for k in SMALL_MIX} | {"junk": 8, "near_duplicate_bands": []}
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
    def pair(o, c, kind, band=None, jaccard=1.0):
        return {"original": o, "copy": c, "kind": kind, "band": band, "jaccard": jaccard}

    labels = {"clean": ["a", "b", "c", "d", "e", "f"], "junk": {"j1": "symbols", "j2": "code"},
              "dup_pairs": [pair("a", "a2", "exact"), pair("b", "b2", "near", 0.95, 0.95),
                            pair("e", "e2", "near", 0.55, 0.55), pair("f", "f2", "near", 0.55, 0.55)]}
    report = {"raw_ids": ["a", "a2", "b", "b2", "c", "d", "e", "e2", "f", "f2", "j1", "j2"],
              "filter_input_ids": ["a", "a2", "b", "b2", "c", "d", "e", "e2", "f", "f2", "j2"],
              "dedup_input_ids": ["a", "a2", "b", "b2", "c", "e", "e2", "f", "f2", "j2"],
              "removed_ids": {"gopher_quality": ["d"], "exact_dedup": ["a"], "minhash_dedup": ["c", "e2"]}}
    d = run.dedup_scores(labels, report, buckets=14, hashes_per_bucket=8)
    # a's pair lost one (either member counts); b's (above the curve's threshold 0.72) none; c wrongly; the pairs
    # at 0.55 are below the threshold: in the curve, not in F1
    assert (d["tp"], d["fp"], d["fn"]) == (1, 1, 1) and d["pairs_scored"] == 4
    p55 = run.lsh_detection_probability(0.55, 14, 8)
    assert d["bands"]["0.55"]["rate"] == 0.5 and abs(d["bands"]["0.55"]["expected"] - p55) < 1e-12
    assert abs(d["lsh_curve_deviation"] - max(0.5 - p55, run.lsh_detection_probability(0.95, 14, 8))) < 1e-12
    f = run.filter_scores(labels, report)
    assert (f["tp"], f["fp"], f["fn"]) == (1, 1, 1) and f["clean_removed"] == ["d"]
    assert f["junk_removed_by"] == {"extraction": 1}


def test_the_planted_near_copies_land_in_their_similarity_bands():
    """Words replaced at the rate that gives each band's 5-gram Jaccard similarity, measured with datatrove's
    shingles (what its MinHash step hashes)."""
    import random

    from impl.core.fixtures import read_documents
    from impl.w19_data import mix

    mh = mix.shingler(pipeline.minhash_config(CPU.pipeline.minhash))
    text = mix.excerpt(read_documents("brown")[0], 4000)["text"]
    for band in (0.95, 0.75, 0.55):
        s = mix.shingle_jaccard(text, mix.near_copy(text, random.Random(0), mix.substitution_rate(band, 5)), mh)
        assert abs(s - band) < 0.08, (band, s)
    assert mix.shingle_jaccard(text, text, mh) == 1.0


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
                         "train": {"batch_size": 4, "grad_accum": 2, "log_every": 1}, "train_bytes": 1500,
                         "eval_bytes": 4000})
    assert GPU1.targets["byte_ppl_ratio"].threshold == 1.10 and GPU1.tokenizer.vocab_size == 32000
    m = adapters.w19_tokenizers(spec, runs).metrics
    stages = {s["stage"]: s for s in m["cleaning"]["report"]["stages"]}
    assert stages["exact dedup"]["docs_in"] > stages["exact dedup"]["docs_out"]  # the repeated documents
    assert m["dataset"]["rows"] == stages["MinHash dedup"]["docs_out"] and m["dataset"]["shards"] >= 1
    assert "wikitext" in m["heldout"] and m["heldout_bytes"] <= 4000
    assert m["bpb"]["sentencepiece"] > 0 and m["bpb"]["gpt2_bpe"] > 0 and m["lm"]["gpt2_bpe"]["vocab_size"] == 50257
    assert m["byte_ppl_ratio"] == 2 ** (m["bpb"]["sentencepiece"] - m["bpb"]["gpt2_bpe"])
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
