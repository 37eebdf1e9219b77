"""Container parity (w21 check a): the suite's CPU image builds here, and w01 trained inside it reproduces the
host's run of the same seed and config.

    pytest acceptance -m "w21 and cpu" -k container
    python -m impl deploy build --profile cpu          # the image alone (impl/w21_infra/images.py)

Both sides run the same command, `python -m impl train w01 --profile P` with P a profile holding only the shrunk
w01 config of the w21 profile's `container.w01` section, with one thread each. The host runs first (it fills the
token cache); the container then reads that same fixture cache mounted read-only, writes its artifacts to a
mounted directory, and runs with `--network none`, so nothing can be fetched. Compared: the logged training loss
at every step and the validation loss; the check's value is the largest absolute difference.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from impl.core.artifacts import ROOT, Runs, RunResult, write_json
from impl.core.errors import MilestonesError
from impl.core.fixtures import cache_dir
from impl.w21_infra import daemon, images, wheels
from impl.w21_infra.daemon import tail

INSIDE_CACHE = "/home/app/.cache/llm-milestones"
INSIDE_ARTIFACTS = "/home/app/artifacts"
INSIDE_PROFILE = "/home/app/profile.yaml"
PROFILE_NAME = "w21-container"


class ContainerSpec(BaseModel):
    """The w21 profile's `container` section."""
    model_config = ConfigDict(extra="forbid")
    flavor: Literal["cpu", "cuda"] = "cpu"  # deploy/docker/Dockerfile.<flavor>
    base_image: str | None = None  # None: the debootstrap base made here; else BASE_IMAGE (python:3.11-slim-bookworm)
    w01: dict[str, Any]  # a w01 section (impl/w01_gpt/spec.py) trained on both sides
    threads: int = 1  # OMP_NUM_THREADS on both sides: the same kernels, the same summation order
    timeout_s: float = 900  # one side's training


def container_spec(spec) -> ContainerSpec:
    section = getattr(spec, "container", spec)
    if section is None:
        raise MilestonesError("the w21 profile has no `container` section (see hardware_profiles/cpu.yaml)")
    if isinstance(section, ContainerSpec):
        return section
    try:
        c = ContainerSpec.model_validate(section)
        from impl.w01_gpt.spec import W01Spec

        W01Spec.model_validate({"targets": {}, **c.w01})
    except ValidationError as e:
        raise MilestonesError(f"w21 container section: {e}") from None
    return c


def write_profile(w01: dict, path: Path) -> Path:
    """A profile holding only the w01 config both sides train."""
    path.write_text(yaml.safe_dump({"name": PROFILE_NAME, "description": "w21 container parity: w01 shrunk",
                                    "milestones": {"w01": {"targets": {}, **w01}}}, sort_keys=False))
    return path


def _side_result(artifacts: Path, side: str, log: str) -> dict:
    runs = sorted((artifacts / "w01" / PROFILE_NAME).glob("*/metrics.json"))
    if not runs:
        raise MilestonesError(f"the {side} run of w01 left no metrics.json under {artifacts}; its output:\n"
                              f"{tail(log, 20)}")
    run = runs[-1].parent
    m = json.loads(runs[-1].read_text())
    curve = [json.loads(l) for l in (run / "train_log.jsonl").read_text().splitlines()]
    return {"val_loss": m["val_loss"], "val_ppl": m["val_ppl"], "final_train_loss": m["final_train_loss"],
            "train_tokens_per_s": m["train_tokens_per_s"], "params": m["params"], "data": m["data"],
            "curve": {c["step"]: c["loss"] for c in curve}, "run_dir": str(run)}


def run_on_host(profile: Path, artifacts: Path, threads: int = 1, timeout_s: float = 900) -> dict:
    """`python -m impl train w01 --profile P` in a subprocess of this venv (the same entry point as the image's)."""
    shutil.rmtree(artifacts, ignore_errors=True)  # a side of an interrupted check: start it again
    artifacts.mkdir(parents=True)
    env = {**os.environ, "LLM_MILESTONES_ARTIFACTS": str(artifacts), "OMP_NUM_THREADS": str(threads),
           "HF_HUB_OFFLINE": "1"}
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "impl", "train", "w01", "--profile", str(profile)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=timeout_s)
    if p.returncode != 0:
        raise MilestonesError(f"the host run of w01 failed (exit {p.returncode}):\n{tail(p.stderr, 20)}")
    return {**_side_result(artifacts, "host", p.stdout + p.stderr), "wall_s": round(time.monotonic() - t0, 1)}


def run_in_container(d: daemon.Docker, image: str, profile: Path, artifacts: Path, threads: int = 1,
                     timeout_s: float = 900) -> dict:
    """The same command inside the image: fixture cache read-only, no network, artifacts to a mounted directory."""
    shutil.rmtree(artifacts, ignore_errors=True)
    artifacts.mkdir(parents=True)
    artifacts.chmod(0o777)  # the image's user (uid 1000) writes here
    t0 = time.monotonic()
    p = d.run_container(image, ["train", "w01", "--profile", INSIDE_PROFILE],
                        mounts=[(str(cache_dir()), INSIDE_CACHE, "ro"), (str(profile), INSIDE_PROFILE, "ro"),
                                (str(artifacts), INSIDE_ARTIFACTS, "rw")],
                        env={"OMP_NUM_THREADS": str(threads)}, timeout=timeout_s)
    out = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
    if p.returncode != 0:
        raise MilestonesError(f"the container run of w01 in {image} failed (exit {p.returncode}):\n"
                              f"{tail(out, 20)}")
    return {**_side_result(artifacts, "container", out), "wall_s": round(time.monotonic() - t0, 1)}


def compare(host: dict, other: dict) -> dict:
    """The largest absolute difference over the logged training losses and the validation loss."""
    if set(host["curve"]) != set(other["curve"]):
        raise MilestonesError(f"the two runs logged different steps: {sorted(host['curve'])} vs "
                              f"{sorted(other['curve'])}")
    curve_diff = max(abs(host["curve"][s] - other["curve"][s]) for s in host["curve"])
    val_diff = abs(host["val_loss"] - other["val_loss"])
    return {"container_loss_diff": max(curve_diff, val_diff), "curve_max_diff": curve_diff, "val_loss_diff": val_diff}


def container_parity(spec, runs: Runs, w01_override: dict | None = None) -> RunResult:
    """Build the image (base made once and kept; the image tag removed afterwards), train w01 on the host and in a
    container, compare. `w01_override` changes the container side only (the sabotage: another seed)."""
    c = container_spec(spec)
    config = {"container": c.model_dump(), "container_override": w01_override or {},
              "image_inputs": images.inputs_hash(c.flavor)}  # another commit's image is another run
    run_dir = runs.dir_for(config, name="container")
    if (run_dir / "metrics.json").exists():
        return RunResult(run_dir, json.loads((run_dir / "metrics.json").read_text()), reused=True)
    host_profile = write_profile(c.w01, run_dir / "profile-host.yaml")
    from impl.core.profiles import deep_merge

    w01_c = json.loads(json.dumps(c.w01))
    deep_merge(w01_c, w01_override or {})
    ctr_profile = write_profile(w01_c, run_dir / "profile-container.yaml")
    # the host run (one thread, ~10 s) goes while the image builds (mostly file copies and layer commits): its
    # tokens/s is then not a clean measurement, which nothing here judges; its losses are bitwise the same.
    # It also fills the token cache the container reads, before the container starts.
    with concurrent.futures.ThreadPoolExecutor(1) as pool, daemon.session() as d:
        host_job = pool.submit(run_on_host, host_profile, run_dir / "host", c.threads, c.timeout_s)
        try:
            build = images.build_image(c, d, keep=False)
        except BaseException:
            concurrent.futures.wait([host_job])  # never leave the subprocess behind; the build's error is the one
            raise
        host = host_job.result()
        ctr = run_in_container(d, build["image"], ctr_profile, run_dir / "container", c.threads, c.timeout_s)
        diffs = compare(host, ctr)
    metrics = {**diffs, "host": host, "container": ctr, "build": build,
               "image_contents": image_contents(c.flavor), "data": host["data"],
               "tokens_per_s_note": "the host side trains while the image builds (its tokens/s shares the cores); "
                                    "the container side trains alone"}
    write_json(run_dir / "metrics.json", metrics)
    return RunResult(run_dir, metrics)


def image_contents(flavor: str = "cpu") -> str:
    pins = wheels.read_lock(wheels.DOCKER_DIR / f"requirements-{flavor}.txt")
    top = [p for p in pins if p.split("==")[0] in ("torch", "transformers", "tokenizers", "deepspeed", "pydantic")]
    return (f"bookworm + python3.11, /opt/venv with {len(pins)} pinned packages ({', '.join(top)}, ...), the suite "
            f"at /opt/llm-milestones (editable install), user app (uid 1000), entrypoint `python -m impl`")
