"""w21's container half: the parity check's sabotage twin (another seed fails the container_loss_diff target that
the same config passes), one clear error for a missing daemon and for a failing Dockerfile step (with the step
and its log's tail, and nothing left behind), the build context the image is made from, and the image's lock
against this venv."""
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from impl.core.profiles import deep_merge, load_profile
from impl.w21_infra import docker, image

CPU = load_profile("cpu").milestone("w21")
TARGET = CPU.targets["container_loss_diff"]


def _tiny_w01(**train) -> dict:
    """The cpu profile's container.w01 shrunk to 6 steps (seconds per run)."""
    w01 = image.container_spec(CPU).model_dump()["w01"]
    deep_merge(w01, {"train": {"steps": 6, **train}, "eval": {"max_tokens": 1024}})
    return w01


# --- the sabotage twin ---------------------------------------------------------------------------------------
def test_a_run_with_another_seed_fails_the_parity_target_that_the_same_run_passes(tmp_path):
    """The check's comparison, fed with what a container that trained another seed would report."""
    same = image.run_on_host(image.write_profile(_tiny_w01(), tmp_path / "a.yaml"), tmp_path / "a")
    other = image.run_on_host(image.write_profile(_tiny_w01(seed=1), tmp_path / "c.yaml"), tmp_path / "c")
    assert TARGET.passes(image.compare(same, same)["container_loss_diff"])
    sabotaged = image.compare(same, other)["container_loss_diff"]
    assert not TARGET.passes(sabotaged), sabotaged
    assert sabotaged > 100 * TARGET.threshold  # far beyond round-off, not a marginal fail


def test_runs_that_logged_different_steps_are_refused_rather_than_compared():
    a = {"curve": {0: 1.0, 1: 0.9}, "val_loss": 1.0}
    with pytest.raises(Exception, match="different steps"):
        image.compare(a, {"curve": {0: 1.0}, "val_loss": 1.0})


# --- errors --------------------------------------------------------------------------------------------------
def test_a_missing_daemon_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    with pytest.raises(docker.DaemonMissing, match="no Docker daemon answers at DOCKER_HOST=unix://.*no-such.sock"):
        docker.connect()
    with pytest.raises(docker.DaemonMissing, match="DOCKER_HOST"):
        docker.build_image(CPU)


def _shell_image(d: docker.Docker, tmp_path: Path) -> str:
    """A 3 MB image holding the host's dash and the C library, imported in a second: a shell to fail a RUN in."""
    tag = f"llmm-tinyshell:{d.owner}"
    files = [Path("/usr/bin/dash"), Path("/lib/x86_64-linux-gnu/libc.so.6"), Path("/lib64/ld-linux-x86-64.so.2")]
    with tarfile.open(tmp_path / "rootfs.tar", "w") as tar:
        for f in files:
            tar.add(f.resolve(), arcname=str(f).lstrip("/"))
        tar.add("/usr/bin/dash", arcname="bin/sh")
    d.cmd("import", str(tmp_path / "rootfs.tar"), tag)
    d.made["images"].append(tag)
    return tag


_NO_DOCKER = docker.unavailable()


@pytest.mark.skipif(_NO_DOCKER is not None, reason=f"Docker cannot run here: {_NO_DOCKER}")
def test_a_failing_dockerfile_step_is_one_error_naming_the_step_with_its_log_tail_and_nothing_is_left(tmp_path):
    with docker.session() as d:
        base = _shell_image(d, tmp_path)
        ctx = tmp_path / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(f"FROM {base}\nRUN echo preparing\nRUN echo the-step-output && exit 3\n"
                                        "RUN echo never-reached\n")
        with pytest.raises(docker.BuildError) as e:
            docker.docker_build(d, ctx, f"llmm-broken:{d.owner}")
        msg = str(e.value)
        assert "step 3/4 (RUN echo the-step-output && exit 3)" in msg
        assert "the-step-output" in msg and "non-zero code: 3" in msg and "never-reached" not in msg
        left = d.cmd("ps", "-aq", "--filter", f"ancestor={base}").stdout.split()
        assert not left, "--force-rm leaves no intermediate container of the failed step"
        owner, layers = d.owner, list(d.made["layers"])
        assert layers, "the step that succeeded left an intermediate image, to be removed"
        # someone tags the first one meanwhile (as `deploy build` tags an image whose steps were this build's)
        kept = f"llmm-kept:{owner}"
        d.cmd("tag", layers[0], kept)
    # the session removed the image it imported and the failed build's intermediate images, but not the one that
    # another tag names; the suite's daemon (if it started one) stops when unused
    with docker.session() as d:
        assert not d.image_exists(f"llmm-tinyshell:{owner}")
        assert d.image_exists(kept), "an image with another tag is never removed by id"
        d.cmd("image", "rm", kept)
        assert not [i for i in layers if d.image_exists(i)]


def test_a_build_records_only_the_images_it_made_not_those_it_took_from_the_cache(monkeypatch):
    log = ("Step 1/3 : FROM base\n ---> 111111111111\nStep 2/3 : RUN a\n ---> Using cache\n ---> 222222222222\n"
           "Step 3/3 : RUN b\n ---> Running in 999999999999\nRemoving intermediate container 999999999999\n"
           " ---> 333333333333\nSuccessfully built 333333333333\n")
    d = docker.Docker("unix:///nowhere")
    monkeypatch.setattr(d, "cmd", lambda *a, **k: subprocess.CompletedProcess(a, 0, log.encode(), b""))
    info = docker.docker_build(d, Path("."), "llmm-x:1")
    assert d.made["layers"] == ["333333333333"] and info["steps_cached"] == 1


def test_a_stale_pidfile_never_gets_another_process_killed(monkeypatch, tmp_path):
    """started.pid naming a live process that is not dockerd (the pid reused): not ours, left alone."""
    monkeypatch.setattr(docker, "STATE", tmp_path)
    (tmp_path / "started.pid").write_text(str(os.getpid()))  # this pytest process: alive, and not a dockerd
    assert docker._suite_dockerd() is None
    docker._stop_dockerd()  # would SIGTERM this very process if it trusted the file
    assert not (tmp_path / "started.pid").exists()


# --- what the image is made from -----------------------------------------------------------------------------
def test_the_images_lock_pins_exactly_the_versions_of_the_suites_environment_lock():
    """Parity needs the same versions on both sides: the image's lock is derived from requirements-cpu.lock (which
    tests/test_lock.py holds equal to this venv); regenerate it when that lock changes."""
    lock = docker.read_lock(docker.DOCKER_DIR / "requirements-cpu.txt")
    assert lock == docker.host_lock(docker.IMAGE_PACKAGES)
    assert "torch==2.13.0+cpu" in lock


def test_the_build_context_holds_the_dockerfile_the_lock_the_wheels_and_the_suite(tmp_path):
    ctx = docker.build_context(docker.DOCKER_DIR / "Dockerfile.cpu", docker.DOCKER_DIR / "requirements-cpu.txt",
                               tmp_path / "ctx")
    wheels = {p.name.split("-")[0].lower() for p in (ctx / "wheels").glob("*.whl")}
    pins = {p.split("==")[0].replace("-", "_") for p in docker.read_lock(ctx / "requirements.txt")}
    assert pins <= wheels | {p.replace("_", "-") for p in wheels}, pins - wheels
    assert (ctx / "src" / "impl" / "w01_gpt" / "train.py").exists()
    assert (ctx / "src" / "hardware_profiles" / "cpu.yaml").exists()
    assert not list(ctx.rglob("__pycache__"))
    text = (ctx / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in text and "USER app" in text
    assert text.count("\nFROM ") == 2  # multi-stage: the runtime image has no wheels
    assert docker.context_hash(ctx) == docker.context_hash(ctx)


def test_both_dockerfiles_are_multi_stage_non_root_with_a_base_image_argument():
    for flavor in ("cpu", "cuda"):
        text = (docker.DOCKER_DIR / f"Dockerfile.{flavor}").read_text()
        assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in text
        assert "FROM ${BASE_IMAGE} AS build" in text and "COPY --from=build" in text and "USER app" in text
        assert "--no-index --find-links /wheels" in text or flavor == "cuda"
        pins = docker.read_lock(docker.DOCKER_DIR / f"requirements-{flavor}.txt")
        assert pins and all("==" in p for p in pins), "every package pinned"


def test_the_cuda_context_carries_no_host_wheels_and_its_lock_takes_torchs_cuda_build(tmp_path):
    """The CUDA image's code path up to `docker build` (a CPU host has no CUDA torch to pass in)."""
    ctx = docker.build_context(docker.DOCKER_DIR / "Dockerfile.cuda", docker.DOCKER_DIR / "requirements-cuda.txt",
                               tmp_path / "ctx", host_wheels=False)
    assert [p.name for p in (ctx / "wheels").iterdir()] == ["README"]
    pins = docker.read_lock(ctx / "requirements.txt")
    assert "torch==2.13.0" in pins and "deepspeed==0.19.8" in pins
    cpu = docker.read_lock(docker.DOCKER_DIR / "requirements-cpu.txt")
    assert [p for p in pins if not p.startswith("torch==")] == [p for p in cpu if not p.startswith("torch==")]
    assert "--no-build-isolation --no-deps" in (ctx / "Dockerfile").read_text()  # deepspeed against its torch
