"""The cleaning pipeline, built from datatrove's blocks the way FineWeb's is, run with its LocalPipelineExecutor:

    extract   WarcReader -> Trafilatura (HTML to text, in datatrove's sandbox process)
    filter    JsonlReader (extracted + raw JSONL) -> language (py3langid) -> GopherRepetitionFilter ->
              GopherQualityFilter -> C4QualityFilter -> FineWebQualityFilter; each filter's exclusion writer keeps
              what it removed
    exact     ExactDedupSignature -> ExactFindDedups -> ExactDedupFilter (identical text)
    minhash   MinhashDedupSignature -> Buckets -> Cluster -> Filter (5-grams, 14 buckets x 8 hashes, as FineWeb)
    output    ParquetWriter shards, loaded back as a `datasets` Dataset

Our own block, and why: the language filter. datatrove's LanguageFilter downloads a fastText model at run time;
py3langid ships its model in its wheel. Left out, and why: C4BadWordsFilter (downloads its word lists at run
time), URLFilter (tldextract fetches the public suffix list; the mix's URLs are synthetic). The word tokenizer
the Gopher/C4/FineWeb filters use for English is datatrove's spaCy one (spacy.blank, no model download).

Every stage's documents in/out and bytes come from reading what it wrote; every filter's removed examples from
its exclusion writer.
"""
from __future__ import annotations

import gzip
import json
import re
import shutil
import zlib
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.hashing import HashConfig

from impl.core.errors import MilestonesError
from impl.w19_data.spec import PipelineSpec

FILTERS = ("language", "gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality")


class W19DataError(MilestonesError):
    pass


class LangidFilter(BaseFilter):
    """Keeps documents py3langid labels with one of `languages` at probability >= `threshold` (normalised);
    stores language and language_score in the metadata, as datatrove's LanguageFilter does."""
    name = "py3langid language"

    def __init__(self, languages: list[str], threshold: float, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.languages, self.threshold, self._model = list(languages), threshold, None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._model is None:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            self._model = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)  # shipped in the wheel
        lang, prob = self._model.classify(doc.text)
        doc.metadata["language"], doc.metadata["language_score"] = lang, round(float(prob), 4)
        if lang not in self.languages:
            return False, "other_language"
        return prob >= self.threshold or (False, "low_confidence")


def _text(doc: Document) -> str:
    return doc.text


_text.__annotations__["return"] = str  # ExactDedupConfig reads the hash input type from it (a type, not a string)
# sha1 (64-bit), not datatrove's default xxhash: its xxhash path hands str to xxhash, which since xxhash 4 wants
# bytes (datatrove's [processing] extra pins xxhash<4; the installed 4.x is kept for the other packages)
SHA1 = HashConfig(precision=64, hash_fc="sha1")
SABOTAGES = ("passthrough_filters", "exact_only_dedup", "swapped_lsh_bands")


def minhash_config(m):
    """datatrove's MinhashConfig for a MinhashSpec: the pipeline's and the similarity measurement's."""
    from datatrove.pipeline.dedup import MinhashConfig

    return MinhashConfig(n_grams=m.n_grams, num_buckets=m.buckets, hashes_per_bucket=m.hashes_per_bucket,
                         hash_config=SHA1)


def read_folder(folder: Path) -> list[dict]:
    """Every document a datatrove JSONL writer left in `folder` (sorted files, file order)."""
    docs = []
    for f in sorted(folder.rglob("*.jsonl.gz")) if folder.exists() else []:
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            docs += [json.loads(line) for line in fh if line.strip()]
    return docs


def plain_id(doc_id: str) -> str:
    """The mix's own id: WARC records carry it as <urn:w19:ID>."""
    m = re.fullmatch(r"<urn:w19:(.*)>", doc_id)
    return m.group(1) if m else doc_id


def _summary(docs: list[dict]) -> dict:
    return {"docs": len(docs), "bytes": sum(len(d["text"].encode("utf-8")) for d in docs)}


def _run(name: str, steps: list, work: Path, tasks: int, workers: int = 1) -> None:
    """One datatrove stage; workers=1 runs its tasks one after another in this process (no pool)."""
    from datatrove.executor import LocalPipelineExecutor

    LocalPipelineExecutor(pipeline=steps, tasks=tasks, workers=min(workers, tasks),
                          logging_dir=str(work / "logs" / name), skip_completed=False).run()


def run(raw: Path, work: Path, out: Path, spec: PipelineSpec, sabotage: str | None = None,
        log=print, filtered_work: Path | None = None) -> dict:
    """Clean `raw` (warc/*.warc.gz, jsonl/*.jsonl) through `work` into Parquet shards in `out`; return the report.
    `sabotage` (the twins): "passthrough_filters" skips every filter, "exact_only_dedup" the MinHash stage,
    "swapped_lsh_bands" runs MinHash with b and r swapped. `filtered_work`: the work folder of an earlier run on
    the same raw input with the same filters, whose extraction and filtering are copied instead of run again (the
    dedup twins differ from their check only after them: ~20 s of a CI worker each)."""
    from datatrove.pipeline.dedup import (MinhashDedupBuckets, MinhashDedupCluster,
                                          MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.dedup.exact_dedup import (ExactDedupConfig, ExactDedupFilter, ExactDedupSignature,
                                                      ExactFindDedups)
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter)
    from datatrove.pipeline.readers import JsonlReader, WarcReader
    from datatrove.pipeline.writers import JsonlWriter, ParquetWriter

    if sabotage not in (None, *SABOTAGES):
        raise ValueError(f"unknown sabotage {sabotage!r}")
    t = spec.tasks
    stages = []

    # 1. extraction: HTML responses -> text
    raw_warc = [] if not (raw / "warc").exists() else sorted((raw / "warc").glob("*.warc.gz"))
    raw_jsonl = sorted((raw / "jsonl").glob("*.jsonl")) if (raw / "jsonl").exists() else []
    if filtered_work is not None:
        shutil.copytree(filtered_work, work)
    elif raw_warc:
        _run("extract", [WarcReader(str(raw / "warc"), glob_pattern="*.warc.gz"),
                         Trafilatura(favour_precision=True, timeout=spec.extraction_timeout_s),
                         JsonlWriter(str(work / "extracted"))], work, t, t)
    extracted = read_folder(work / "extracted")
    n_responses = _count_warc_responses(raw_warc)
    raw_docs = [json.loads(line) for f in raw_jsonl for line in f.read_text(encoding="utf-8").splitlines()
                if line.strip()]
    stages.append({"stage": "read (WARC responses + JSONL records)", "docs_in": n_responses + len(raw_docs),
                   "docs_out": n_responses + len(raw_docs),
                   "bytes_out": sum(p.stat().st_size for p in raw_warc) + _summary(raw_docs)["bytes"]})
    stages.append({"stage": "extract (trafilatura, WARC only)", "docs_in": n_responses, "docs_out": len(extracted),
                   "bytes_out": _summary(extracted)["bytes"]})

    # 2. filters, each keeping what it removed
    excl = lambda name: JsonlWriter(str(work / "removed" / name))  # noqa: E731
    filters = [] if sabotage == "passthrough_filters" else [
        LangidFilter(spec.languages, spec.language_threshold, exclusion_writer=excl("language")),
        GopherRepetitionFilter(exclusion_writer=excl("gopher_repetition")),
        GopherQualityFilter(exclusion_writer=excl("gopher_quality")),
        C4QualityFilter(filter_no_terminal_punct=False, exclusion_writer=excl("c4_quality")),  # as FineWeb
        FineWebQualityFilter(exclusion_writer=excl("fineweb_quality")),
    ]
    readers = ([JsonlReader(str(work / "extracted"))] if extracted else []) + \
        ([JsonlReader(str(raw / "jsonl"), glob_pattern="*.jsonl", compression=None)] if raw_jsonl else [])
    if filtered_work is None:
        _run("filter", [*readers, *filters, JsonlWriter(str(work / "filtered"))], work, t, t)
    n_in, b_in = len(extracted) + len(raw_docs), _summary(extracted)["bytes"] + _summary(raw_docs)["bytes"]
    removed = {}
    for name in FILTERS:
        gone = read_folder(work / "removed" / name)
        removed[name] = gone
        # bytes as the filter saw them; C4's line filtering also shortens the documents it keeps, so the
        # last filter's figure is the written output's
        n_in, b_in = n_in - len(gone), b_in - _summary(gone)["bytes"]
        stages.append({"stage": f"filter: {name}", "docs_in": n_in + len(gone), "docs_out": n_in, "bytes_out": b_in})
    filtered = read_folder(work / "filtered")
    stages[-1]["bytes_out"] = _summary(filtered)["bytes"]
    if not filtered:
        raise W19DataError(f"every one of the {len(extracted) + len(raw_docs)} documents was removed by the "
                           f"filters ({', '.join(f'{k}: {len(v)}' for k, v in removed.items())}): an empty "
                           f"corpus; nothing was written")

    # 3. exact dedup, 4. MinHash dedup
    if sabotage == "swapped_lsh_bands":
        spec = spec.model_copy(update={"minhash": spec.minhash.model_copy(update={
            "buckets": spec.minhash.hashes_per_bucket, "hashes_per_bucket": spec.minhash.buckets})})
    exact = ExactDedupConfig(content_getter=_text, hash_config=SHA1)
    _run("exact-1", [JsonlReader(str(work / "filtered")), ExactDedupSignature(str(work / "exact/sigs"), exact)],
         work, t, t)
    _run("exact-2", [ExactFindDedups(str(work / "exact/sigs"), str(work / "exact/dups"), exact)], work, 1, t)
    _run("exact-3", [JsonlReader(str(work / "filtered")),
                     ExactDedupFilter(str(work / "exact/dups"), exact, exclusion_writer=excl("exact_dedup")),
                     JsonlWriter(str(work / "exact_deduped"))], work, t, t)
    if sabotage == "exact_only_dedup":
        shutil.copytree(work / "exact_deduped", work / "deduped")
    else:
        m = spec.minhash
        mh = minhash_config(m)
        _run("minhash-1", [JsonlReader(str(work / "exact_deduped")),
                           MinhashDedupSignature(str(work / "mh/sigs"), mh)], work, t, t)
        _run("minhash-2", [MinhashDedupBuckets(str(work / "mh/sigs"), str(work / "mh/buckets"), config=mh)],
             work, m.buckets, t)
        _run("minhash-3", [MinhashDedupCluster(str(work / "mh/buckets"), str(work / "mh/remove"), config=mh)],
             work, 1, t)
        _run("minhash-4", [JsonlReader(str(work / "exact_deduped")),
                           MinhashDedupFilter(str(work / "mh/remove"), exclusion_writer=excl("minhash_dedup")),
                           JsonlWriter(str(work / "deduped"))], work, t, t)
    exact_removed = read_folder(work / "removed/exact_dedup")
    minhash_removed = read_folder(work / "removed/minhash_dedup")
    deduped = read_folder(work / "deduped")
    n = len(filtered)
    stages.append({"stage": "exact dedup", "docs_in": n, "docs_out": n - len(exact_removed),
                   "bytes_out": _summary(filtered)["bytes"] - _summary(exact_removed)["bytes"]})
    stages.append({"stage": "MinHash dedup", "docs_in": n - len(exact_removed), "docs_out": len(deduped),
                   "bytes_out": _summary(deduped)["bytes"]})

    # 5. the output: Parquet shards, read back through `datasets`
    _run("output", [JsonlReader(str(work / "deduped")),
                    ParquetWriter(str(out), output_filename="${rank}.parquet",
                                  max_file_size=spec.shard_bytes)], work, t, t)
    for s in stages:
        log(f"{s['stage']}: {s['docs_in']:,} docs in, {s['docs_out']:,} out"
            + (f", {s['bytes_out']:,} bytes out" if s["bytes_out"] is not None else ""))
    k = spec.examples_per_filter
    return {"stages": stages,
            "removed_ids": {**{name: [plain_id(d["id"]) for d in docs] for name, docs in removed.items()},
                            "exact_dedup": [plain_id(d["id"]) for d in exact_removed],
                            "minhash_dedup": [plain_id(d["id"]) for d in minhash_removed]},
            "examples": {name: [{"id": plain_id(d["id"]), "text": d["text"][:300]} for d in docs[:k]]
                         for name, docs in [*removed.items(), ("exact_dedup", exact_removed),
                                            ("minhash_dedup", minhash_removed)]},
            "dedup_input_ids": [plain_id(d["id"]) for d in filtered],
            "filter_input_ids": [plain_id(d["id"]) for d in extracted + raw_docs],
            "kept_ids": [plain_id(d["id"]) for d in deduped],
            "raw_ids": [plain_id(i) for i in _warc_ids(raw_warc)] + [plain_id(d["id"]) for d in raw_docs]}


def _count_warc_responses(paths: list[Path]) -> int:
    return len(_warc_ids(paths))


def _warc_ids(paths: list[Path]) -> list[str]:
    from warcio.archiveiterator import ArchiveIterator

    ids = []
    for p in paths:
        with open(p, "rb") as f:
            ids += [r.rec_headers["WARC-Record-ID"] for r in ArchiveIterator(f) if r.rec_type == "response"]
    return ids


def validate_raw(raw: Path) -> None:
    """One clear error for a malformed input record, before anything is written: every JSONL line an object with
    a string `text`, every WARC record readable with its headers."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    for f in sorted((raw / "jsonl").glob("*.jsonl")) if (raw / "jsonl").exists() else []:
        for i, line in enumerate(f.read_text(encoding="utf-8", errors="strict").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise W19DataError(f"{f}: line {i} is not valid JSON ({e}); fix or remove the record") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise W19DataError(f"{f}: line {i} is not a JSON object with a string 'text' field")
    for f in sorted((raw / "warc").glob("*.warc.gz")) if (raw / "warc").exists() else []:
        n = 0
        try:
            with open(f, "rb") as fh:
                for n, record in enumerate(ArchiveIterator(fh), 1):
                    if not record.rec_headers.get_header("WARC-Record-ID"):
                        raise W19DataError(f"{f}: WARC record {n} has no WARC-Record-ID")
                    record.content_stream().read()
        except (ArchiveLoadFailed, OSError, EOFError, ValueError, zlib.error) as e:
            raise W19DataError(f"{f}: WARC record {n + 1} is malformed ({type(e).__name__}: {e})") from None
        if n == 0 and f.stat().st_size:
            raise W19DataError(f"{f}: WARC record 1 is malformed (no record could be read from its "
                               f"{f.stat().st_size} bytes)")
