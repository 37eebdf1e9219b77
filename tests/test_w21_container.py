"""w21's container half: the parity check's sabotage twin (another seed fails the container_loss_diff target that
the same config passes), one clear error for a missing daemon and for a failing Dockerfile step (with the step
and its log's tail, and nothing left behind), the build context the image is made from, and the image's lock
against this venv."""
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from impl.core.profiles import deep_merge, load_profile
from impl.w21_infra import container, daemon, images, wheels

CPU = load_profile("cpu").milestone("w21")
TARGET = CPU.targets["container_loss_diff"]


def _tiny_w01(**train) -> dict:
    """The cpu profile's container.w01 shrunk to 6 steps (seconds per run)."""
    w01 = container.container_spec(CPU).model_dump()["w01"]
    deep_merge(w01, {"train": {"steps": 6, **train}, "eval": {"max_tokens": 1024}})
    return w01


# --- the sabotage twin ---------------------------------------------------------------------------------------
def test_a_run_with_another_seed_fails_the_parity_target_that_the_same_run_passes(tmp_path):
    """The check's comparison, fed with what a container that trained another seed would report."""
    same = container.run_on_host(container.write_profile(_tiny_w01(), tmp_path / "a.yaml"), tmp_path / "a")
    other = container.run_on_host(container.write_profile(_tiny_w01(seed=1), tmp_path / "c.yaml"), tmp_path / "c")
    assert TARGET.passes(container.compare(same, same)["container_loss_diff"])
    sabotaged = container.compare(same, other)["container_loss_diff"]
    assert not TARGET.passes(sabotaged), sabotaged
    assert sabotaged > 100 * TARGET.threshold  # far beyond round-off, not a marginal fail


def test_runs_that_logged_different_steps_are_refused_rather_than_compared():
    a = {"curve": {0: 1.0, 1: 0.9}, "val_loss": 1.0}
    with pytest.raises(Exception, match="different steps"):
        container.compare(a, {"curve": {0: 1.0}, "val_loss": 1.0})


# --- errors --------------------------------------------------------------------------------------------------
def test_a_missing_daemon_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    with pytest.raises(daemon.DaemonMissing, match="no Docker daemon answers at DOCKER_HOST=unix://.*no-such.sock"):
        daemon.connect()
    with pytest.raises(daemon.DaemonMissing, match="DOCKER_HOST"):
        images.build_image(CPU)


def _shell_image(d: daemon.Docker, tmp_path: Path) -> str:
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


_NO_DOCKER = daemon.why_unavailable()


@pytest.mark.skipif(_NO_DOCKER is not None, reason=f"Docker cannot run here: {_NO_DOCKER}")
def test_a_failing_dockerfile_step_is_one_error_naming_the_step_with_its_log_tail_and_nothing_is_left(tmp_path):
    with daemon.session() as d:
        base = _shell_image(d, tmp_path)
        ctx = tmp_path / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(f"FROM {base}\nRUN echo preparing\nRUN echo the-step-output && exit 3\n"
                                        "RUN echo never-reached\n")
        with pytest.raises(images.BuildError) as e:
            images.docker_build(d, ctx, f"llmm-broken:{d.owner}")
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
    with daemon.session() as d:
        assert not d.image_exists(f"llmm-tinyshell:{owner}")
        assert d.image_exists(kept), "an image with another tag is never removed by id"
        d.cmd("image", "rm", kept)
        assert not [i for i in layers if d.image_exists(i)]


def test_a_build_records_only_the_images_it_made_not_those_it_took_from_the_cache(monkeypatch):
    log = ("Step 1/3 : FROM base\n ---> 111111111111\nStep 2/3 : RUN a\n ---> Using cache\n ---> 222222222222\n"
           "Step 3/3 : RUN b\n ---> Running in 999999999999\nRemoving intermediate container 999999999999\n"
           " ---> 333333333333\nSuccessfully built 333333333333\n")
    d = daemon.Docker("unix:///nowhere")
    monkeypatch.setattr(d, "cmd", lambda *a, **k: subprocess.CompletedProcess(a, 0, log.encode(), b""))
    info = images.docker_build(d, Path("."), "llmm-x:1")
    assert d.made["layers"] == ["333333333333"] and info["steps_cached"] == 1


def test_a_stale_pidfile_never_gets_another_process_killed(monkeypatch, tmp_path):
    """started.pid naming a live process that is not dockerd (the pid reused): not ours, left alone."""
    monkeypatch.setattr(daemon, "STATE", tmp_path)
    (tmp_path / "started.pid").write_text(str(os.getpid()))  # this pytest process: alive, and not a dockerd
    assert daemon._suite_dockerd() is None
    daemon._stop_dockerd()  # would SIGTERM this very process if it trusted the file
    assert not (tmp_path / "started.pid").exists()


# --- what the image is made from -----------------------------------------------------------------------------
def test_the_images_lock_pins_exactly_the_versions_of_the_suites_environment_lock():
    """Parity needs the same versions on both sides: the image's lock is derived from requirements-cpu.lock (which
    tests/test_lock.py holds equal to this venv); regenerate it when that lock changes."""
    lock = wheels.read_lock(wheels.DOCKER_DIR / "requirements-cpu.txt")
    assert lock == wheels.host_lock(wheels.IMAGE_PACKAGES)
    assert "torch==2.13.0+cpu" in lock


@pytest.mark.registry  # ~260 MB of wheels from the package registry when the cache does not hold them yet
def test_the_build_context_holds_the_dockerfile_the_lock_the_wheels_and_the_suite(tmp_path):
    ctx = images.build_context(wheels.DOCKER_DIR / "Dockerfile.cpu", wheels.DOCKER_DIR / "requirements-cpu.txt",
                               tmp_path / "ctx")
    have = {p.name.split("-")[0].lower() for p in (ctx / "wheels").glob("*.whl")}
    pins = {p.split("==")[0].replace("-", "_") for p in wheels.read_lock(ctx / "requirements.txt")}
    assert pins <= have | {p.replace("_", "-") for p in have}, pins - have
    assert (ctx / "src" / "impl" / "w01_gpt" / "train.py").exists()
    assert (ctx / "src" / "hardware_profiles" / "cpu.yaml").exists()
    assert not list(ctx.rglob("__pycache__"))
    text = (ctx / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in text and "USER app" in text
    assert text.count("\nFROM ") == 2  # multi-stage: the runtime image has no wheels
    assert images.context_hash(ctx) == images.context_hash(ctx)


def test_both_dockerfiles_are_multi_stage_non_root_with_a_base_image_argument():
    for flavor in ("cpu", "cuda"):
        text = (wheels.DOCKER_DIR / f"Dockerfile.{flavor}").read_text()
        assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in text
        assert "FROM ${BASE_IMAGE} AS build" in text and "COPY --from=build" in text and "USER app" in text
        assert "--no-index --find-links /wheels" in text or flavor == "cuda"
        pins = wheels.read_lock(wheels.DOCKER_DIR / f"requirements-{flavor}.txt")
        assert pins and all("==" in p for p in pins), "every package pinned"


def test_the_cuda_context_carries_no_host_wheels_and_its_lock_takes_torchs_cuda_build(tmp_path):
    """The CUDA image's code path up to `docker build` (a CPU host has no CUDA torch to pass in)."""
    ctx = images.build_context(wheels.DOCKER_DIR / "Dockerfile.cuda", wheels.DOCKER_DIR / "requirements-cuda.txt",
                               tmp_path / "ctx", host_wheels=False)
    assert [p.name for p in (ctx / "wheels").iterdir()] == ["README"]
    pins = wheels.read_lock(ctx / "requirements.txt")
    assert "torch==2.13.0" in pins and "deepspeed==0.19.8" in pins
    cpu = wheels.read_lock(wheels.DOCKER_DIR / "requirements-cpu.txt")
    assert [p for p in pins if not p.startswith("torch==")] == [p for p in cpu if not p.startswith("torch==")]
    assert "--no-build-isolation --no-deps" in (ctx / "Dockerfile").read_text()  # deepspeed against its torch


def test_the_container_runs_key_changes_with_the_dockerfile_the_lock_and_impl(tmp_path, monkeypatch):
    """A run made in another commit's image is another run (--reuse-artifacts must not report it under this one)."""
    tree = tmp_path / "suite"
    for name in ["impl/w01_gpt/train.py", "deploy/docker/Dockerfile.cpu", "deploy/docker/requirements-cpu.txt",
                 *images.SUITE_FILES]:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(name) if name.count(".") else (tree / name).mkdir(exist_ok=True)
    monkeypatch.setattr(images, "ROOT", tree)
    monkeypatch.setattr(images, "DOCKER_DIR", tree / "deploy" / "docker")
    seen = {images.inputs_hash()}
    for name in ["impl/w01_gpt/train.py", "deploy/docker/Dockerfile.cpu", "deploy/docker/requirements-cpu.txt"]:
        (tree / name).write_text("changed")
        seen.add(images.inputs_hash())
    assert len(seen) == 4


# --- a registry or mirror that hangs, and what a stopped build leaves -----------------------------------------
class _Mirror(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _serve(directory: Path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: _Mirror(*a, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_mirror_that_never_answers_is_one_clear_error_within_the_stated_time():
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    try:
        with pytest.raises(images.DockerError, match=r"did not serve .*within 1 s.*LLM_MILESTONES_DEBIAN_MIRROR"):
            images.check_mirror(f"http://127.0.0.1:{silent.getsockname()[1]}/debian", timeout_s=1)
    finally:
        silent.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting inside the fake root file system needs root")
def test_a_debootstrap_that_times_out_is_stopped_and_leaves_no_mounts(tmp_path, monkeypatch):
    """The mirror comes from the setting; a debootstrap that mounts the chroot's /proc and then hangs is stopped
    after the time-out, with its children, and its mounts are gone."""
    (tmp_path / "mirror" / "dists" / "bookworm").mkdir(parents=True)
    (tmp_path / "mirror" / "dists" / "bookworm" / "Release").write_text("Suite: bookworm\n")
    fake = tmp_path / "bin" / "debootstrap"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n# debootstrap ... SUITE TARGET MIRROR\nmkdir -p \"$4/proc\" && mount -t proc proc "
                    "\"$4/proc\" && echo \"$5\" > " + str(tmp_path / "asked") + " && exec sleep 300\n")
    fake.chmod(0o755)
    server = _serve(tmp_path / "mirror")
    try:
        monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("LLM_MILESTONES_DEBIAN_MIRROR", f"http://127.0.0.1:{server.server_port}/debian-here")
        (tmp_path / "mirror" / "debian-here").symlink_to(tmp_path / "mirror")
        with pytest.raises(images.DockerError, match="did not finish within 3 s"):
            images.ensure_base(daemon.Docker("unix:///nowhere"), tag="llmm-never:x", timeout_s=3)
    finally:
        server.shutdown()
    assert (tmp_path / "asked").read_text().strip().endswith("/debian-here")
    assert "llmm-rootfs-" not in Path("/proc/mounts").read_text()
    assert subprocess.run(["pgrep", "-f", "sleep 300"], capture_output=True).returncode == 1


def test_a_wheel_download_abandoned_by_a_dead_process_is_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_MILESTONES_CACHE", str(tmp_path))
    lock = wheels.DOCKER_DIR / "requirements-cpu.txt"

    pins = wheels.read_lock(lock)
    out = tmp_path / "w21-wheels" / hashlib.sha256("\n".join(pins).encode()).hexdigest()[:12]
    out.mkdir(parents=True)
    (out / "COMPLETE").write_text("\n".join(pins))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    abandoned, running = out.with_name(f"{out.name}.{dead.pid}.tmp"), out.with_name(f"{out.name}.{os.getpid()}.tmp")
    for d in (abandoned, running):
        d.mkdir()
    assert wheels.wheels_for(lock) == out
    assert not abandoned.exists() and running.exists()


# --- what makes the checks skip: the capability itself, not the presence of a command or a socket ----------
@pytest.mark.skipif(_NO_DOCKER is not None, reason=f"Docker cannot run here: {_NO_DOCKER}")
@pytest.mark.skipif(os.geteuid() != 0, reason="a private mount namespace needs root")
def test_a_daemon_that_cannot_see_this_machines_files_makes_the_container_check_skip_with_the_reason(tmp_path):
    """A socket mounted from another host answers, but bind mounts name paths it cannot see. Here: the suite's own
    daemon, asked from a private mount namespace whose fixture cache is a tmpfs the daemon never sees."""
    ask = [sys.executable, "-c", "from impl.w21_infra import daemon; print(daemon.why_unavailable())"]
    with daemon.session() as d:
        env = {**os.environ, "DOCKER_HOST": d.host, "LLM_MILESTONES_CACHE": str(tmp_path / "cache")}
        (tmp_path / "cache").mkdir()
        seen = subprocess.run(ask, capture_output=True, text=True, env=env, timeout=120)
        private = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                                  f"mount -t tmpfs none {tmp_path / 'cache'} && exec \"$@\"", "sh", *ask],
                                 capture_output=True, text=True, env=env, timeout=120)
    assert seen.stdout.strip() == "None", seen.stdout + seen.stderr
    assert "cannot see this machine's files" in private.stdout, private.stdout + private.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not __import__("shutil").which("unshare"), reason="needs root and unshare")
def test_root_without_the_privilege_to_make_namespaces_makes_the_two_host_checks_skip_with_the_reason():
    """root in a user namespace (as in an unprivileged container) has `ip` and uid 0, but cannot make one."""
    ask = [sys.executable, "-c", "from impl.w21_infra import netns; print(netns.why_unavailable())"]
    here = subprocess.run(ask, capture_output=True, text=True, timeout=60)
    unprivileged = subprocess.run(["unshare", "--user", "--map-root-user", *ask], capture_output=True, text=True,
                                  timeout=60)
    assert here.stdout.strip() == "None", here.stdout + here.stderr
    assert "`ip netns add` fails here" in unprivileged.stdout, unprivileged.stdout + unprivileged.stderr
