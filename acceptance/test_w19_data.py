"""w19 — clean and deduplicate raw web text (Common Crawl / OSCAR), train a 32k SentencePiece tokenizer on it and
a GPT-2 124M with it; WikiText-2 validation perplexity within 10% of the same model with GPT-2's tokenizer.

    pytest acceptance -m "w19 and cpu"    # a ~4 MB messy offline mix with planted duplicates and junk (~3 min)
    pytest acceptance -m "w19 and gpu1"   # FineWeb's sample through the same pipeline, 32k pieces, GPT-2 124M

The pipeline is datatrove's (WARC/JSONL readers, trafilatura, language, Gopher, C4 and FineWeb filters, exact
and MinHash dedup) writing Parquet shards read back as a `datasets` dataset; its cleaning report (documents and
bytes per stage, examples each filter removed) goes into the scorecard. The tokenizers are compared in bits per
byte on the same held-out text (token perplexities under different vocabularies are not comparable: both are
recorded, neither is gated on), with fertility and the byte-fallback share beside them.
"""
import pytest

from impl import adapters

_runs: dict[str, object] = {}


def _result(spec, runs):
    """One run per spec in this process, read by every check."""
    key = spec.model_dump_json()
    if key not in _runs:
        _runs[key] = adapters.w19_tokenizers(spec, runs)
    return _runs[key]


def _cell(s) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")[:200]


def _stages_markdown(report) -> str:
    rows = ["| stage | docs in | docs out | bytes out |", "|---|---|---|---|"]
    rows += [f"| {s['stage']} | {s['docs_in']:,} | {s['docs_out']:,} | "
             f"{'' if s['bytes_out'] is None else format(s['bytes_out'], ',')} |" for s in report["stages"]]
    return "\n".join(rows)


def _examples_markdown(report) -> str:
    rows = ["| removed by | id | text (start) |", "|---|---|---|"]
    rows += [f"| {name} | {_cell(e['id'])} | {_cell(e['text'])} |"
             for name, examples in report["examples"].items() for e in examples]
    return "\n".join(rows)


def _tokenizers_markdown(m) -> str:
    rows = ["| tokenizer | vocabulary | bits per byte | unigram bpb | token ppl | tokens per word | bytes per token "
            "| byte-fallback share | lossless |", "|---|---|---|---|---|---|---|---|---|"]
    for name, lm in m["lm"].items():
        s = m["tokenizer_stats"][name]
        rows.append(f"| {name} | {lm['vocab_size']:,} | {lm['bpb']:.4f} | {lm['unigram_bpb']:.4f} | "
                    f"{lm['token_ppl']:.1f} | {s['fertility']:.3f} | {s['bytes_per_token']:.2f} | "
                    f"{s['byte_fallback_share']:.5f} | {s['lossless']} |")
    return "\n".join(rows)


def _bands_markdown(d) -> str:
    rows = ["| band (5-gram Jaccard) | pairs | measured Jaccard (min-max) | detected | LSH curve expects |",
            "|---|---|---|---|---|"]
    rows += [f"| {band} | {b['pairs']} | {b['jaccard']['min']:.3f}-{b['jaccard']['max']:.3f} | {b['rate']:.3f} | "
             f"{b['expected']:.3f} |" for band, b in d["bands"].items()]
    return "\n".join(rows)


def _cleaning_context(c) -> dict:
    return {"stages": _stages_markdown(c["report"]), "removed_examples": _examples_markdown(c["report"]),
            "dataset_shards": ", ".join(c["shards"])}


@pytest.mark.check("w19", target="byte_ppl_ratio")
def test_our_sentencepiece_tokenizer_is_within_reach_of_gpt2s_in_perplexity_per_byte(spec, runs, scorecard):
    for seeded in scorecard.each_seed(spec):
        r = _result(seeded, runs)
        m = r.metrics
        ours, gpt2 = m["lm"]["sentencepiece"], m["lm"]["gpt2_bpe"]
        scorecard.check(m["byte_ppl_ratio"], data=f"{m['data']}; cleaned: {m['dataset']['rows']:,} documents in "
                        f"{m['dataset']['shards']} Parquet shards; held out: {m['heldout']}",
                        curve=[(p["step"], p["loss"]) for p in m["curves"]["sentencepiece"]],
                        bpb_ours=ours["bpb"], bpb_gpt2=gpt2["bpb"], bpb_ratio=m["bpb_ratio"],
                        unigram_bpb_ours=ours["unigram_bpb"], unigram_bpb_gpt2=gpt2["unigram_bpb"],
                        steps_ours=ours["steps"], steps_gpt2=gpt2["steps"],
                        headline={"perplexity per byte, ours / GPT-2's": m["byte_ppl_ratio"],
                                  "bpb ours": ours["bpb"], "bpb GPT-2": gpt2["bpb"]},
                        token_ppl_ours=ours["token_ppl"], token_ppl_gpt2=gpt2["token_ppl"],
                        token_ppl_note="perplexities per token of different vocabularies: not comparable",
                        fertility_ours=m["tokenizer_stats"]["sentencepiece"]["fertility"],
                        fertility_gpt2=m["tokenizer_stats"]["gpt2_bpe"]["fertility"],
                        byte_fallback_share=m["tokenizer_stats"]["sentencepiece"]["byte_fallback_share"],
                        held_equal=m["held_equal"], tokenizer_recipe=str(m["tokenizer_recipe"]),
                        tokenizers=_tokenizers_markdown(m), dataset_dir=m["dataset"]["dir"])


@pytest.mark.check("w19", target="dedup_f1")
def test_dedup_removes_the_planted_copies_lsh_is_built_to_catch(spec, runs, scorecard):
    for seeded in scorecard.each_seed(spec):
        r = _result(seeded, runs)
        c = r.metrics["cleaning"]
        d = c["dedup"]
        scorecard.check(d["f1"], data=c["data"], trivial={"dedup passing everything": 0.0},
                        precision=d["precision"], recall=d["recall"], pairs_scored=d["pairs_scored"],
                        lsh_threshold=d["lsh_threshold"], bands=_bands_markdown(d),
                        removed_by_exact_dedup=len(c["report"]["removed_ids"]["exact_dedup"]),
                        removed_by_minhash=len(c["report"]["removed_ids"]["minhash_dedup"]),
                        **_cleaning_context(c))


@pytest.mark.check("w19", target="lsh_curve_deviation")
def test_minhash_detects_each_similarity_band_as_often_as_its_lsh_curve_predicts(spec, runs, scorecard):
    for seeded in scorecard.each_seed(spec):
        c = _result(seeded, runs).metrics["cleaning"]
        d = c["dedup"]
        scorecard.check(d["lsh_curve_deviation"], data=c["data"], bands=_bands_markdown(d),
                        lsh_threshold=d["lsh_threshold"],
                        trivial={"exact dedup only (no near copy found)":
                                 max(b["expected"] for b in d["bands"].values())})


@pytest.mark.check("w19", target="filter_f1")
def test_the_filters_remove_the_planted_junk_and_keep_the_clean_text(spec, runs, scorecard):
    for seeded in scorecard.each_seed(spec):
        r = _result(seeded, runs)
        c = r.metrics["cleaning"]
        f = c["filters"]
        scorecard.check(f["f1"], data=c["data"], trivial={"remove everything": f["remove_everything_f1"],
                                                          "keep everything": 0.0},
                        precision=f["precision"], recall=f["recall"], junk_removed_by_kind=str(f["removed_by_kind"]),
                        recall_seen_kinds=f["recall_seen_kinds"], recall_unseen_kinds=f["recall_unseen_kinds"],
                        junk_removed_by=str(f["junk_removed_by"]),
                        clean_documents_removed=", ".join(f["clean_removed"]) or "none", **_cleaning_context(c))


@pytest.mark.check("w19", target="lm_vs_unigram")
def test_both_models_learn_more_than_the_frequencies_of_their_tokens(spec, runs, scorecard):
    """Gated on the weaker of the two: bits per byte over those of a unigram model of its own tokenizer."""
    for seeded in scorecard.each_seed(spec):
        m = _result(seeded, runs).metrics
        ratios = m["bpb_vs_unigram"]
        weaker = max(ratios, key=ratios.get)
        scorecard.check(ratios[weaker], data=m["data"], weaker_model=weaker,
                        bpb_vs_unigram_sentencepiece=ratios["sentencepiece"], bpb_vs_unigram_gpt2=ratios["gpt2_bpe"],
                        bpb={n: lm["bpb"] for n, lm in m["lm"].items()},
                        unigram_bpb={n: lm["unigram_bpb"] for n, lm in m["lm"].items()},
                        trivial={"the unigram model itself": 1.0})
