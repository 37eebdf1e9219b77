"""w19 end to end: raw web-like text -> datatrove cleaning and dedup -> a Parquet `datasets` dataset -> our
SentencePiece tokenizer -> the w01 GPT trained twice (ours vs GPT-2's BPE) -> bits per byte on held-out text.

    python -m impl train w19 --profile cpu     # writes the dataset, the tokenizer, metrics.json

cpu: the raw mix is built from offline fixtures (mix.py) with planted duplicates and junk whose labels score the
dedup and the filters (precision/recall). gpu1: documents from a hub web-text dataset (FineWeb's sample), the
held-out text WikiText-2's validation split.
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np

from impl.core.artifacts import RunResult, Runs, environment, write_json
from impl.core.corpora import in_val
from impl.w19_data import lm, mix, pipeline, tokenizer
from impl.w19_data.pipeline import W19DataError
from impl.w19_data.spec import W19Spec

SABOTAGES = (None, *pipeline.SABOTAGES, "wrong_data_tokenizer")


def prf(tp: int, fp: int, fn: int) -> dict:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "tp": tp, "fp": fp, "fn": fn}


def lsh_detection_probability(s: float, buckets: int, hashes_per_bucket: int) -> float:
    """MinHash-LSH's chance that two documents of Jaccard similarity s share at least one of b buckets of r
    hashes: 1 - (1 - s^r)^b."""
    return 1 - (1 - s ** hashes_per_bucket) ** buckets


def dedup_scores(labels: dict, report: dict, buckets: int, hashes_per_bucket: int) -> dict:
    """The planted pairs that reached dedup, with both members: detected when dedup removed one of them.
    Per band of near copies, the detection rate against the LSH curve's expectation (the mean of P(s) over the
    band's pairs, s each pair's measured Jaccard), and the largest deviation; F1 over the pairs LSH is built to
    catch (exact copies and near copies above the curve's threshold (1/b)^(1/r)): a detected pair is a true
    positive, a missed one a false negative, a pair losing both members or any other labelled clean document
    removed by dedup a false positive."""
    entered = set(report["dedup_input_ids"])
    removed = set(report["removed_ids"]["exact_dedup"]) | set(report["removed_ids"]["minhash_dedup"])
    threshold = (1 / buckets) ** (1 / hashes_per_bucket)
    tp = fp = fn = 0
    bands: dict[str, dict] = {}
    paired = set()
    for pair in labels["dup_pairs"]:
        members = (pair["original"], pair["copy"])
        paired.update(members)
        if not all(m in entered for m in members):
            continue
        hit = sum(m in removed for m in members)
        detected = hit >= 1
        fp += hit == 2
        if pair["kind"] == "near":
            b = bands.setdefault(str(pair["band"]), {"pairs": 0, "detected": 0, "expected": 0.0, "jaccard": []})
            b["pairs"] += 1
            b["detected"] += detected
            b["expected"] += lsh_detection_probability(pair["jaccard"], buckets, hashes_per_bucket)
            b["jaccard"].append(pair["jaccard"])
        if pair["kind"] == "exact" or pair["jaccard"] >= threshold:
            tp += detected
            fn += not detected
    fp += sum(1 for c in labels["clean"] if c not in paired and c in entered and c in removed)
    for b in bands.values():
        b["rate"] = b["detected"] / b["pairs"]
        b["expected"] /= b["pairs"]
        b["jaccard"] = {"min": min(b["jaccard"]), "mean": sum(b["jaccard"]) / len(b["jaccard"]),
                        "max": max(b["jaccard"])}
    deviation = max((abs(b["rate"] - b["expected"]) for b in bands.values()), default=float("nan"))
    return {**prf(tp, fp, fn), "lsh_threshold": threshold, "bands": bands, "lsh_curve_deviation": deviation,
            "pairs_scored": sum(b["pairs"] for b in bands.values()) + sum(
                1 for p in labels["dup_pairs"] if p["kind"] == "exact"
                and p["original"] in entered and p["copy"] in entered)}


def filter_scores(labels: dict, report: dict) -> dict:
    """Planted junk should be removed by extraction or a filter (positives), labelled clean text kept."""
    entered, survived = set(report["raw_ids"]), set(report["dedup_input_ids"])
    junk = [j for j in labels["junk"] if j in entered]
    clean = [c for c in labels["clean"] if c in entered]
    tp = sum(j not in survived for j in junk)
    fp = sum(c not in survived for c in clean)
    by_kind = {}
    for j, kind in labels["junk"].items():
        by_kind.setdefault(kind, [0, 0])
        by_kind[kind][0] += j not in survived
        by_kind[kind][1] += 1
    # which stage removed each planted junk document: extraction (no text left) or the filter that dropped it
    stage_of = {i: name for name, ids in report["removed_ids"].items() for i in ids}
    extracted = set(report["filter_input_ids"])
    by_filter: dict[str, int] = {}
    for j in junk:
        if j not in survived:
            stage = "extraction" if j not in extracted else stage_of.get(j, "?")
            by_filter[stage] = by_filter.get(stage, 0) + 1
    unseen = [j for j in junk if labels["junk"][j] in mix.UNSEEN_JUNK_KINDS]
    prevalence = len(junk) / max(1, len(junk) + len(clean))
    return {**prf(tp, fp, len(junk) - tp), "junk": len(junk), "clean": len(clean),
            "recall_unseen_kinds": sum(j not in survived for j in unseen) / max(1, len(unseen)),
            "recall_seen_kinds": (sum(j not in survived for j in junk if j not in unseen)
                                  / max(1, len(junk) - len(unseen))),
            "junk_removed_by": by_filter,
            "removed_by_kind": {k: f"{a}/{b}" for k, (a, b) in by_kind.items()},
            "clean_removed": [c for c in clean if c not in survived],
            "remove_everything_f1": 2 * prevalence / (1 + prevalence)}


def _hub_documents(spec: W19Spec, out: Path) -> str:
    """gpu1: the first `max_documents` documents of a web-text dataset (streamed from the hub, or a local
    directory of train-*.parquet with a `text` column), written as the raw JSONL input."""
    from impl.core.corpora import DataError, hub_dataset

    d = spec.data
    if d.local_dir:
        ds, origin = hub_dataset(d.hub_path, d.hub_name, d.local_dir, ("train",))
        texts = ds["train"]["text"][:d.max_documents]
    else:
        import datasets

        try:
            stream = datasets.load_dataset(d.hub_path, d.hub_name, split="train", streaming=True)
            texts = (row["text"] for _, row in zip(range(d.max_documents), stream))
        except Exception as e:
            raise DataError(f"cannot stream {d.hub_path}/{d.hub_name} from the hub ({type(e).__name__}: {e}); "
                            f"without a hub set 'data.local_dir' to a directory of train-*.parquet files") from None
        origin = f"{d.hub_path}/{d.hub_name or ''} (hub, streamed)"
    (out / "raw" / "jsonl").mkdir(parents=True)
    n = 0
    with open(out / "raw" / "jsonl" / "00-hub.jsonl", "w") as f:
        for n, text in enumerate(texts, 1):
            f.write(json.dumps({"id": f"hub/{n - 1}", "text": text}, ensure_ascii=False) + "\n")
    return f"{origin}, first {n:,} documents"


def _eval_text(spec: W19Spec) -> tuple[str, str]:
    from impl.core.corpora import hub_dataset

    d = spec.data
    ds, origin = hub_dataset(d.eval_hub_path, d.eval_hub_name, d.eval_local_dir, (d.eval_split,))
    return "".join(ds[d.eval_split]["text"]), f"{origin}, split {d.eval_split}"


def clean_corpus(spec: W19Spec, runs: Runs, sabotage: str | None = None, log=print) -> RunResult:
    """The cleaned dataset (an artifact of its own, reused by the tokenizer and LM runs): raw input, datatrove
    pipeline, Parquet shards, report. Built in a temporary directory and moved into place when complete."""
    config = {"data": spec.data.model_dump(), "mix": spec.mix.model_dump(), "pipeline": spec.pipeline.model_dump(),
              "sabotage": sabotage if sabotage in pipeline.SABOTAGES else None}
    run_dir = runs.dir_for(config, name="dataset")
    if (run_dir / "metrics.json").exists():
        return RunResult(run_dir, json.loads((run_dir / "metrics.json").read_text()), reused=True)
    # extraction and filtering, a stage of its own: the dedup twins (exact only, b and r swapped) differ from the
    # check only after it, and copy it instead of running it again
    filtered = runs.dir_for({**{k: config[k] for k in ("data", "mix", "pipeline")},
                             "filters": config["sabotage"] != "passthrough_filters"}, name="filtered")
    reuse_filtered = (filtered / "metrics.json").exists()
    tmp = run_dir / ".building"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if reuse_filtered:
            kept = json.loads((filtered / "metrics.json").read_text())
            labels, description = kept["labels"], kept["data"]
            shutil.copytree(filtered / "mix", tmp / "mix")
        elif spec.data.source == "offline":
            labels = mix.build(spec.mix, tmp / "mix", pipeline.minhash_config(spec.pipeline.minhash))
            description = labels["description"]
        else:
            labels, description = {"clean": [], "junk": {}, "dup_pairs": []}, _hub_documents(spec, tmp / "mix")
        pipeline.validate_raw(tmp / "mix" / "raw")
        report = pipeline.run(tmp / "mix" / "raw", tmp / "work", tmp / "dataset", spec.pipeline, config["sabotage"],
                              log=log, filtered_work=filtered / "work" if reuse_filtered else None)
        if not reuse_filtered:
            _keep_filtered(tmp, filtered, {"labels": labels, "data": description})
        shards = sorted((tmp / "dataset").rglob("*.parquet"))
        metrics = {"report": report, "labels": labels, "data": description,
                   "dedup": dedup_scores(labels, report, spec.pipeline.minhash.buckets,
                                         spec.pipeline.minhash.hashes_per_bucket) if labels["dup_pairs"] else None,
                   "filters": filter_scores(labels, report) if labels["junk"] else None,
                   "shards": [str(p.relative_to(tmp / "dataset")) for p in shards], "sabotage": config["sabotage"]}
        shutil.move(str(tmp / "dataset"), str(run_dir / "dataset"))
        shutil.move(str(tmp / "mix"), str(run_dir / "mix"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the work folders, or whatever a failure left
    write_json(run_dir / "metrics.json", metrics)
    return RunResult(run_dir, metrics)


def _keep_filtered(tmp: Path, stage: Path, metrics: dict) -> None:
    """The raw mix and what extraction and filtering left in the work folder (the filters' exclusions, not dedup's),
    into the filter stage's run directory; metrics.json last."""
    shutil.copytree(tmp / "mix", stage / "mix")
    kept = ["extracted", "filtered", *(f"removed/{name}" for name in pipeline.FILTERS)]
    for folder in kept:
        if (tmp / "work" / folder).exists():
            shutil.copytree(tmp / "work" / folder, stage / "work" / folder)
    write_json(stage / "metrics.json", metrics)


def load_dataset(dataset_dir: Path):
    """The cleaned corpus as a `datasets` Dataset, from its Parquet shards."""
    import datasets

    shards = sorted(str(p) for p in Path(dataset_dir).rglob("*.parquet"))
    if not shards:
        raise W19DataError(f"{dataset_dir}: no Parquet shards")
    return datasets.load_dataset("parquet", data_files={"train": shards}, split="train")


def _ids(enc: tokenizer.Encoder, docs: list[str]) -> np.ndarray:
    out = []
    for d in docs:
        out.extend(enc.encode(d))
        out.append(enc.eos_id)
    return np.asarray(out, dtype=np.int32)


def _cap(docs: list[str], max_bytes: int) -> list[str]:
    if not max_bytes:
        return docs
    kept, total = [], 0
    for d in docs:
        if total >= max_bytes:
            break
        kept.append(d)
        total += len(d.encode("utf-8"))
    return kept


def run(spec: W19Spec, runs: Runs, w01, progress: bool = False, sabotage: str | None = None, log=print) -> RunResult:
    """`w01`: w01's model and training parts (adapters.w01_training_parts), on which both tokenizers' GPTs train."""
    if sabotage not in SABOTAGES:
        raise ValueError(f"sabotage must be one of {SABOTAGES}; got {sabotage!r}")
    cleaned = clean_corpus(spec, runs.reusing(), sabotage, log)
    run_dir = runs.dir_for({**spec.model_dump(exclude={"targets"}), "sabotage": sabotage,
                            "dataset": cleaned.run_dir.name})
    if (run_dir / "metrics.json").exists():
        return RunResult(run_dir, json.loads((run_dir / "metrics.json").read_text()), reused=True)
    ds = load_dataset(cleaned.run_dir / "dataset")
    texts, ids = list(ds["text"]), list(ds["id"])
    if spec.data.source == "offline":
        train = [t for t, i in zip(texts, ids) if not in_val(i, spec.data.heldout_fraction)]
        pool = [t for t, i in zip(texts, ids) if in_val(i, spec.data.heldout_fraction)]
        random.Random(spec.lm.train.seed).shuffle(pool)  # whole documents, in a seeded order, up to eval_bytes
        heldout_docs, size = [], 0
        for doc in pool:
            if spec.lm.eval_bytes and size >= spec.lm.eval_bytes:
                break
            heldout_docs.append(doc)
            size += len(doc.encode("utf-8")) + 2
        heldout = "\n\n".join(heldout_docs)
        heldout_origin = (f"{len(heldout_docs)} whole held-out cleaned documents drawn in a seed-{spec.lm.train.seed} "
                          f"order from the {len(pool)} held out (sha256 of id, fraction {spec.data.heldout_fraction})"
                          f", {len(heldout.encode('utf-8')):,} bytes")
    else:
        train, (heldout, heldout_origin) = list(texts), _eval_text(spec)
        if spec.lm.eval_bytes:
            heldout = heldout.encode("utf-8")[:spec.lm.eval_bytes].decode("utf-8", "ignore")
    if not train or not heldout.strip():
        raise W19DataError(f"the cleaned corpus leaves no training text ({len(train)} documents) or no held-out "
                           f"text; enlarge the mix or lower heldout_fraction")
    tok_texts = _cap(train, spec.tokenizer.max_train_bytes)
    if sabotage == "wrong_data_tokenizer":  # the twin: trained on the junk the pipeline removed, tiny vocabulary
        wrong = [mix.junk_document(k, random.Random(i), ["zz", "qq", "xx"])
                 for i, k in enumerate(mix.JUNK_KINDS * 4)]
        tok_texts = wrong
    sp_spec = spec.tokenizer if sabotage != "wrong_data_tokenizer" else spec.tokenizer.model_copy(
        update={"vocab_size": 384})
    sp_model = tokenizer.train_sentencepiece(tok_texts, sp_spec, run_dir / "tokenizer")
    encoders = {"sentencepiece": tokenizer.load_sentencepiece(sp_model), "gpt2_bpe": tokenizer.load_gpt2()}
    lm_docs = _cap(train, spec.lm.max_train_bytes)
    train_bytes = sum(len(d.encode("utf-8")) for d in lm_docs)
    heldout_bytes = len(heldout.encode("utf-8"))
    results, tok_stats, steps = {}, {}, {}
    for name, enc in encoders.items():
        tok_stats[name] = tokenizer.stats(enc, heldout)
        (run_dir / name).mkdir(exist_ok=True)
        train_ids = _ids(enc, lm_docs)
        steps[name] = lm.steps_for_bytes(spec.lm, train_bytes / len(train_ids))
        # the end-of-text id in front, as between training documents: every token of the held-out text is then
        # scored, so bits per byte divide by exactly its bytes for both tokenizers
        heldout_ids = np.asarray([enc.eos_id] + list(enc.encode(heldout)), dtype=np.int32)
        results[name] = lm.train_and_score(spec.lm, steps[name], train_ids, heldout_ids, heldout_bytes,
                                           enc.vocab_size, run_dir / name, w01, progress)
        results[name]["steps"] = steps[name]
        results[name]["train_bytes_seen"] = round(steps[name] * spec.lm.train.batch_size * spec.lm.model.context
                                                  * train_bytes / len(train_ids))
        results[name]["vocab_size"] = enc.vocab_size
        results[name]["train_tokens"] = int(len(train_ids))
        log(f"{name}: vocab {enc.vocab_size:,}, bpb {results[name]['bpb']:.4f}, token ppl "
            f"{results[name]['token_ppl']:.1f}, fertility {tok_stats[name]['fertility']:.3f}")
    shards = sorted((cleaned.run_dir / "dataset").rglob("*.parquet"))
    metrics = {
        "bpb": {n: r["bpb"] for n, r in results.items()},
        "bpb_ratio": results["sentencepiece"]["bpb"] / results["gpt2_bpe"]["bpb"],
        # the seed's "perplexity within 10%", per byte so that the two vocabularies share a unit: 2^(bpb difference)
        "byte_ppl_ratio": 2 ** (results["sentencepiece"]["bpb"] - results["gpt2_bpe"]["bpb"]),
        # each model against the unigram model of its own tokens: a ratio compares tokenizers only when both
        # models learned more than token frequencies
        "bpb_vs_unigram": {n: r["bpb"] / r["unigram_bpb"] for n, r in results.items()},
        "lm": {n: {k: v for k, v in r.items() if k != "curve"} for n, r in results.items()},
        "curves": {n: r["curve"] for n, r in results.items()},
        "tokenizer_stats": tok_stats, "sabotage": sabotage,
        "tokenizer_recipe": {**sp_spec.model_dump(), "normalization": "identity", "user_defined": ["\\n", "\\t"],
                             "trained_on_bytes": sum(len(t.encode("utf-8")) for t in tok_texts),
                             "model_file": str(sp_model),
                             "sha256": hashlib.sha256(sp_model.read_bytes()).hexdigest()[:16]},
        "held_equal": (f"w01 GPT {spec.lm.model.n_layer}x{spec.lm.model.n_embd} (heads {spec.lm.model.n_head}, "
                       f"context {spec.lm.model.context}), batches of {spec.lm.train.batch_size} sequences, lr "
                       f"{spec.lm.train.lr}, seed {spec.lm.train.seed}, {spec.lm.train_bytes:,} bytes of training "
                       f"text seen by each (" + ", ".join(f"{n} {s} steps" for n, s in steps.items()) + f") drawn "
                       f"from the same {train_bytes:,} bytes ({len(lm_docs)} cleaned documents), the same "
                       f"{heldout_bytes:,} held-out bytes; only the tokenizer (and so the embedding/head size) "
                       f"differs"),
        "heldout": heldout_origin, "train_documents": len(lm_docs), "train_bytes": train_bytes,
        "heldout_bytes": heldout_bytes,
        "dataset": {"dir": str(cleaned.run_dir / "dataset"), "shards": len(shards), "rows": len(ds),
                    "bytes": sum(p.stat().st_size for p in shards), "columns": ds.column_names},
        "cleaning": cleaned.metrics, "data": cleaned.metrics["data"], "environment": environment(),
    }
    write_json(run_dir / "metrics.json", metrics)
    return RunResult(run_dir, metrics)
