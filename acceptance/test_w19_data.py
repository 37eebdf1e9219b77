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


def _cleaning_context(c) -> dict:
    return {"stages": _stages_markdown(c["report"]), "removed_examples": _examples_markdown(c["report"]),
            "dataset_shards": ", ".join(c["shards"])}


@pytest.mark.check("w19", target="dedup_f1")
def test_dedup_removes_the_planted_exact_and_near_duplicates(spec, runs, scorecard):
    for seeded in scorecard.each_seed(spec):
        r = _result(seeded, runs)
        c = r.metrics["cleaning"]
        d = c["dedup"]
        scorecard.check(d["f1"], data=c["data"], trivial={"dedup passing everything": 0.0},
                        precision=d["precision"], recall=d["recall"], duplicate_groups_scored=d["groups_scored"],
                        removed_by_exact_dedup=len(c["report"]["removed_ids"]["exact_dedup"]),
                        removed_by_minhash=len(c["report"]["removed_ids"]["minhash_dedup"]),
                        **_cleaning_context(c))


@pytest.mark.check("w19", target="filter_f1")
def test_the_filters_remove_the_planted_junk_and_keep_the_clean_text(spec, runs, scorecard):
    for seeded in scorecard.each_seed(spec):
        r = _result(seeded, runs)
        c = r.metrics["cleaning"]
        f = c["filters"]
        scorecard.check(f["f1"], data=c["data"], trivial={"remove everything": f["remove_everything_f1"],
                                                          "keep everything": 0.0},
                        precision=f["precision"], recall=f["recall"], junk_removed_by_kind=str(f["removed_by_kind"]),
                        clean_documents_removed=", ".join(f["clean_removed"]) or "none", **_cleaning_context(c))


@pytest.mark.check("w19", target="bpb")
def test_our_sentencepiece_tokenizer_is_within_reach_of_gpt2s_in_bits_per_byte(spec, runs, scorecard):
    for seeded in scorecard.each_seed(spec):
        r = _result(seeded, runs)
        m = r.metrics
        ours, gpt2 = m["lm"]["sentencepiece"], m["lm"]["gpt2_bpe"]
        scorecard.check(ours["bpb"], data=f"{m['data']}; cleaned: {m['dataset']['rows']:,} documents in "
                        f"{m['dataset']['shards']} Parquet shards; held out: {m['heldout']}",
                        curve=[(p["step"], p["loss"]) for p in m["curves"]["sentencepiece"]],
                        baselines={"gpt2_bpe": gpt2["bpb"]},
                        trivial={"unigram model, our tokenizer (bpb)": ours["unigram_bpb"],
                                 "unigram model, GPT-2 BPE (bpb)": gpt2["unigram_bpb"]},
                        token_ppl_ours=ours["token_ppl"], token_ppl_gpt2=gpt2["token_ppl"],
                        token_ppl_note="perplexities per token of different vocabularies: not comparable",
                        fertility_ours=m["tokenizer_stats"]["sentencepiece"]["fertility"],
                        fertility_gpt2=m["tokenizer_stats"]["gpt2_bpe"]["fertility"],
                        byte_fallback_share=m["tokenizer_stats"]["sentencepiece"]["byte_fallback_share"],
                        held_equal=m["held_equal"], tokenizer_recipe=str(m["tokenizer_recipe"]),
                        tokenizers=_tokenizers_markdown(m), dataset_dir=m["dataset"]["dir"])


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
