"""The Docker side of w21: a daemon, a base image, the suite's image, containers, and cleanup of all of it.

    python -m impl deploy build --profile cpu          # base image (debootstrap) + the CPU image of the suite
    from impl.w21_infra import docker
    with docker.session() as d:                        # finds or starts dockerd; removes what it made on exit
        info = docker.build_image(spec, d)             # deploy/docker/Dockerfile.cpu, wheels from the host
        d.run_container(info["image"], ["profiles"])

Daemon: DOCKER_HOST when set (never started by the suite: a missing one is an error), else a daemon answering on
/var/run/docker.sock, else (as root, with Debian's docker.io installed) the suite starts its own `dockerd` with its
own socket, pidfile, data-root and exec-root, and stops it when the last process of the suite using it leaves.
Processes register under a file lock (pytest-xdist runs a fast-test module and the acceptance module at once).

Base image: no registry is reachable here, so `debootstrap --variant=minbase bookworm` with python3.11 is
imported with `docker import` as llm-milestones-base:bookworm-py311 (~45 s once; kept, so a second run reuses it).
Its apt caches are emptied first. On a machine with a registry, `BASE_IMAGE=python:3.11-slim-bookworm` (the
Dockerfiles' default) is used as is.

Wheels: the image installs from wheels the host provides (`pip install --no-index --find-links /wheels`): the
pinned lock deploy/docker/requirements-cpu.txt is downloaded once with the host's pip (its find-links and local
indexes: torch comes from /opt/wheels, not from the network; deepspeed, an sdist, with `pip wheel`, which reuses
the wheel bootstrap.sh built) into $LLM_MILESTONES_CACHE/w21-wheels/<lock hash>/ and hard-linked into every build
context. Regenerate the lock from the venv with `python -m impl.w21_infra.docker --lock cpu`.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from impl.core.errors import MilestonesError
from impl.core.fixtures import cache_dir

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "deploy" / "docker"
BASE_TAG = "llm-milestones-base:bookworm-py311"
IMAGE_REPO = "llm-milestones"
LABEL = "org.llm-milestones.owner"  # every container / network the suite makes carries it: <pid>-<session>
MIRROR = "http://deb.debian.org/debian"
# the suite's own daemon (only when none is running): state kept under /var/lib so the base image survives restarts
STATE = Path(os.environ.get("LLM_MILESTONES_DOCKER_STATE", "/var/lib/llm-milestones-docker"))
SOCKET = Path("/run/llm-milestones-docker/docker.sock")
# what the image installs (with everything they require, pinned in deploy/docker/requirements-<flavor>.txt): what
# `python -m impl train w01` imports, not the whole suite's dependencies (w03-w15's libraries)
# (starlette: `python -m impl` reads the w09 server's docstring for its help, and that module imports it;
# deepspeed: the worker the cluster manifests run, impl/w21_infra/worker.py)
IMAGE_PACKAGES = ["torch", "transformers", "tokenizers", "safetensors", "numpy", "pyyaml", "pydantic", "tqdm",
                  "starlette", "deepspeed", "pip"]
# packages PyPI has only as an sdist: built once with the host's pip (`pip wheel`, reusing the wheel bootstrap.sh
# built, whose shared-memory collective is compiled against this same torch) instead of downloaded
SDIST_BUILDS = {"deepspeed": {"DS_BUILD_SHM_COMM": "1", "DS_ACCELERATOR": "cpu"}}
# the files of the suite (besides impl/) the image needs: profiles, fixture sources, the package metadata
SUITE_FILES = ["pyproject.toml", "README.md", "hardware_profiles", "fixtures/sources.yaml"]


class DockerError(MilestonesError):
    pass


class DaemonMissing(DockerError):
    pass


class BuildError(DockerError):
    pass


def _lock_path(name: str) -> Path:
    d = STATE / "locks"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{name}.lock"


@contextlib.contextmanager
def file_lock(name: str):
    """A lock shared by every process of the suite on this machine (xdist workers, a second pytest)."""
    with open(_lock_path(name), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


_owners = itertools.count()


@dataclass
class Docker:
    """The docker CLI pointed at one daemon; `made` lists what this process created, removed by `cleanup`."""
    host: str  # unix:///path/to.sock
    started_by_suite: bool = False
    user: str = ""  # this session's registration with the suite's daemon: <pid>-<n>
    made: dict = field(default_factory=lambda: {"containers": [], "networks": [], "images": [], "layers": []})
    _counter: itertools.count = field(default_factory=itertools.count)
    owner: str = field(default_factory=lambda: f"{os.getpid()}-{next(_owners)}")  # the LABEL's value

    def env(self) -> dict:
        # DOCKER_BUILDKIT=0: the legacy builder (Debian's docker.io has no buildx); the Dockerfiles use only it
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "0", "DOCKER_CLI_HINTS": "false"}

    def cmd(self, *args: str, timeout: float = 120, check: bool = True, input: bytes | None = None,
            stdin=None) -> subprocess.CompletedProcess:
        exe = shutil.which("docker")
        if exe is None:
            raise DaemonMissing("no `docker` command on PATH: install Debian's docker.io (bootstrap.sh does, as root)")
        try:
            p = subprocess.run([exe, *args], env=self.env(), capture_output=True, timeout=timeout, input=input,
                               stdin=stdin)
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
            raise DockerError(f"`docker {' '.join(args[:3])} ...` did not finish within {timeout:.0f} s: "
                              f"{_tail(out)}") from None
        if check and p.returncode != 0:
            raise DockerError(f"`docker {' '.join(args[:4])} ...` failed (exit {p.returncode}): "
                              f"{_tail(p.stderr.decode(errors='replace') or p.stdout.decode(errors='replace'))}")
        return p

    def name(self, kind: str) -> str:
        """A unique name: two pytest-xdist workers (or two suites) never collide."""
        return f"llmm-{kind}-{self.owner}-{next(self._counter)}"

    def image_exists(self, tag: str) -> bool:
        return self.cmd("image", "inspect", tag, check=False).returncode == 0

    def image_size_mb(self, tag: str) -> float:
        return int(self.cmd("image", "inspect", "--format", "{{.Size}}", tag).stdout.decode().strip()) / 2**20

    def run_container(self, image: str, args: list[str], *, mounts: list[tuple[str, str, str]] = (),
                      env: dict | None = None, network: str = "none", name: str | None = None,
                      timeout: float = 600) -> subprocess.CompletedProcess:
        """`docker run` to completion (not detached); the container is removed afterwards, also on a time-out.
        mounts: (host path, container path, "ro" | "rw"). network "none" by default: nothing is fetched."""
        name = name or self.name("run")
        cmd = ["run", "--name", name, "--label", f"{LABEL}={self.owner}", "--network", network]
        for host, inside, mode in mounts:
            cmd += ["-v", f"{host}:{inside}:{mode}"]
        for k, v in (env or {}).items():
            cmd += ["-e", f"{k}={v}"]
        self.made["containers"].append(name)
        try:
            return self.cmd(*cmd, image, *args, timeout=timeout, check=False)
        finally:
            self.cmd("rm", "-f", name, check=False, timeout=60)
            self.made["containers"].remove(name)

    def cleanup(self) -> None:
        """Remove every container, network, image tag and intermediate image this session made (containers and
        networks found by their label too, so one a failed command left behind goes as well)."""
        mine = f"label={LABEL}={self.owner}"
        ids = self.cmd("ps", "-aq", "--filter", mine, check=False).stdout.decode().split()
        for c in set(ids) | set(self.made["containers"]):
            self.cmd("rm", "-f", c, check=False, timeout=60)
        nets = self.cmd("network", "ls", "-q", "--filter", mine, check=False).stdout.decode().split()
        for n in set(nets) | set(self.made["networks"]):
            self.cmd("network", "rm", n, check=False)
        for tag in self.made["images"]:  # a tag: when its image has other tags too, only this tag goes
            self.cmd("image", "rm", "-f", tag, check=False, timeout=300)
        for layer in reversed(self.made["layers"]):  # children first; those a kept image uses stay
            # an id that carries a tag is someone's image (a build whose last steps were all this build's and
            # that another build or `deploy build` tagged since): removing it by id would delete it, tag and all
            tags = self.cmd("image", "inspect", "--format", "{{json .RepoTags}}", layer, check=False, timeout=60)
            if tags.returncode != 0 or json.loads(tags.stdout.decode() or "null"):
                continue  # gone already, or tagged
            self.cmd("image", "rm", layer, check=False, timeout=300)
        self.made = {"containers": [], "networks": [], "images": [], "layers": []}


# ---------------------------------------------------------------------------------------------- the daemon

def _answers(host: str, timeout: float = 10) -> tuple[bool, str]:
    exe = shutil.which("docker")
    if exe is None:
        return False, "no `docker` command on PATH"
    try:
        p = subprocess.run([exe, "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True,
                           timeout=timeout, env={**os.environ, "DOCKER_HOST": host})
    except subprocess.TimeoutExpired:
        return False, f"no answer within {timeout:.0f} s"
    return p.returncode == 0 and bool(p.stdout.strip()), _tail(p.stderr, 3)


def _users_dir() -> Path:
    d = STATE / "users"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _start_dockerd() -> None:
    exe = shutil.which("dockerd")
    if exe is None:
        raise DaemonMissing("no Docker daemon is running and `dockerd` is not installed: as root, "
                            "`apt-get install -y docker.io debootstrap` (bootstrap.sh does it), or set DOCKER_HOST")
    if os.geteuid() != 0:
        raise DaemonMissing("no Docker daemon is running and only root can start one: start dockerd (or set "
                            "DOCKER_HOST to a running daemon's socket)")
    SOCKET.parent.mkdir(parents=True, exist_ok=True)
    (STATE / "data").mkdir(parents=True, exist_ok=True)
    log = open(STATE / "dockerd.log", "ab")
    proc = subprocess.Popen(
        [exe, "--host", f"unix://{SOCKET}", "--pidfile", str(STATE / "dockerd.pid"), "--data-root",
         str(STATE / "data"), "--exec-root", str(SOCKET.parent / "exec"), "--storage-driver=overlay2"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # its own session: outlives no one by accident
    (STATE / "started.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DaemonMissing(f"dockerd exited (code {proc.returncode}) while starting: "
                                f"{_tail((STATE / 'dockerd.log').read_text(errors='replace'), 15)}")
        if _answers(f"unix://{SOCKET}", 5)[0]:
            return
        time.sleep(0.5)
    _stop_dockerd()
    raise DaemonMissing(f"dockerd did not answer within 60 s; its log: {STATE / 'dockerd.log'}")


def _suite_dockerd() -> int | None:
    """The pid in started.pid when that process is alive and is a dockerd; None otherwise (the file is stale:
    the daemon died, or the pid now belongs to another process)."""
    try:
        pid = int((STATE / "started.pid").read_text())
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except (OSError, ValueError):
        return None
    return pid if Path(argv0.decode(errors="replace")).name == "dockerd" and _alive(pid) else None


def _stop_dockerd() -> None:
    pidfile = STATE / "started.pid"
    if not pidfile.exists():
        return
    pid = _suite_dockerd()
    if pid is None:  # nothing of ours runs under that pid: never signal whatever has it now
        pidfile.unlink(missing_ok=True)
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # our child when this process started it: reap it
        time.sleep(0.2)
    if _suite_dockerd() == pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)


_sessions = itertools.count()


def unavailable() -> str | None:
    """None when a daemon is running or the suite can start one; else why not (a skip reason)."""
    if shutil.which("docker") is None:
        return "no `docker` command (Debian's docker.io; bootstrap.sh installs it as root)"
    if os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists() or _answers(f"unix://{SOCKET}", 5)[0]:
        return None  # a daemon is expected there: connect() says clearly if it does not answer
    if shutil.which("dockerd") is None:
        return "no Docker daemon running and no `dockerd` to start (apt-get install docker.io)"
    if os.geteuid() != 0:
        return "no Docker daemon running, and only root can start dockerd"
    return None


def connect() -> Docker:
    """Find a daemon, or start the suite's own; register this process as one of its users."""
    if os.environ.get("DOCKER_HOST"):
        host = os.environ["DOCKER_HOST"]
        ok, why = _answers(host)
        if not ok:
            raise DaemonMissing(f"no Docker daemon answers at DOCKER_HOST={host} ({why}); start it, or unset "
                                f"DOCKER_HOST to let the suite use /var/run/docker.sock or start its own dockerd")
        return Docker(host)
    if Path("/var/run/docker.sock").exists() and _answers("unix:///var/run/docker.sock")[0]:
        return Docker("unix:///var/run/docker.sock")
    with file_lock("daemon"):
        user = f"{os.getpid()}-{next(_sessions)}"  # one per session: a process may hold two at once
        (_users_dir() / user).touch()
        try:
            if not _answers(f"unix://{SOCKET}", 5)[0]:
                if _suite_dockerd() is not None:
                    # our dockerd runs, only slowly (both cores busy with other workers' training): another
                    # process of the suite may be using it, so wait for it rather than restart it under them
                    ok, why = _answers(f"unix://{SOCKET}", 60)
                    if not ok:
                        raise DaemonMissing(f"the suite's dockerd (pid {_suite_dockerd()}) runs but did not answer "
                                            f"at unix://{SOCKET} within 60 s ({why}); its log: "
                                            f"{STATE / 'dockerd.log'}")
                else:  # none of ours runs (an earlier suite's was killed): clear its pidfile, start a new one
                    _stop_dockerd()
                    _start_dockerd()
        except BaseException:
            (_users_dir() / user).unlink(missing_ok=True)
            raise
        return Docker(f"unix://{SOCKET}", started_by_suite=True, user=user)


def release(d: Docker) -> None:
    """Clean up this process's objects; stop the suite's daemon when no other live process of the suite uses it."""
    try:
        d.cleanup()
    finally:
        if d.started_by_suite:
            with file_lock("daemon"):
                (_users_dir() / d.user).unlink(missing_ok=True)
                users = []
                for p in _users_dir().iterdir():
                    pid = p.name.split("-")[0]
                    if pid.isdigit() and _alive(int(pid)):
                        users.append(p)
                    else:
                        p.unlink(missing_ok=True)  # a process of the suite that was killed
                if not users:
                    _stop_dockerd()


@contextlib.contextmanager
def session():
    d = connect()
    try:
        yield d
    finally:
        release(d)


# ---------------------------------------------------------------------------------------------- images

def ensure_base(d: Docker, tag: str = BASE_TAG, mirror: str = MIRROR) -> dict:
    """The bookworm + python3.11 base image, made with debootstrap once and reused by tag."""
    with file_lock("base-image"):
        if d.image_exists(tag):
            return {"base_image": tag, "base_built_s": 0.0, "base_reused": True}
        exe = shutil.which("debootstrap")
        if exe is None:
            raise DockerError(f"base image {tag} is missing and `debootstrap` is not installed: as root, "
                              "`apt-get install -y debootstrap` (bootstrap.sh does), or build with "
                              "--base-image python:3.11-slim-bookworm where a registry is reachable")
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="llmm-rootfs-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            # python3.11 only: the Dockerfiles make their venv --without-pip and take pip from the wheels
            p = subprocess.run([exe, "--variant=minbase", "--include=python3.11", "bookworm", str(rootfs), mirror],
                               capture_output=True, text=True, timeout=900)
            if p.returncode != 0:
                raise DockerError(f"debootstrap of the base image failed (exit {p.returncode}): "
                                  f"{_tail(p.stdout + p.stderr, 15)}")
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for f in (rootfs / junk).glob("*"):
                    if f.is_file():
                        f.unlink()
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            try:
                d.cmd("import", "--change", 'CMD ["python3.11"]', "-", tag, stdin=tar.stdout, timeout=600)
            finally:
                tar.stdout.close()
                tar.wait()
        return {"base_image": tag, "base_built_s": round(time.monotonic() - t0, 1), "base_reused": False}


def host_lock(packages: list[str]) -> list[str]:
    """Exact pins of `packages` and everything they need (as this venv's metadata says), at the versions of the
    suite's environment lock (requirements-cpu.lock): the image runs what the suite was tested with."""
    import importlib.metadata as md
    from packaging.requirements import Requirement

    from impl.core.lock import read as read_env_lock

    seen: dict[str, str] = {}
    stack = list(packages)
    while stack:
        name = stack.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        dist = md.distribution(name)
        seen[key] = dist.version
        for r in dist.requires or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                stack.append(req.name)
    env_lock = read_env_lock()
    unlocked = sorted(k for k in seen if k not in env_lock)
    if unlocked:
        raise DockerError(f"{', '.join(unlocked)}: not in requirements-cpu.lock; regenerate it (python -m impl lock)")
    return [f"{k}=={env_lock[k]}" for k in sorted(seen)]


def read_lock(path: Path) -> list[str]:
    return [l.split("#")[0].strip() for l in path.read_text().splitlines() if l.split("#")[0].strip()]


def wheels_for(lock_file: Path) -> Path:
    """The lock's wheels, downloaded once with the host's pip into the cache; reused by every build."""
    pins = read_lock(lock_file)
    out = cache_dir() / "w21-wheels" / hashlib.sha256("\n".join(pins).encode()).hexdigest()[:12]
    with file_lock("wheels"):
        if (out / "COMPLETE").exists():
            return out
        tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        binary = [p for p in pins if p.split("==")[0] not in SDIST_BUILDS]
        jobs = [("download", [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                              "--quiet", "-d", str(tmp), *binary], os.environ)]
        for p in pins:
            name = p.split("==")[0]
            if name in SDIST_BUILDS:
                jobs.append((f"wheel {p}", [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                                            "--quiet", "-w", str(tmp), p], {**os.environ, **SDIST_BUILDS[name]}))
        for what, cmd, env in jobs:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
            if p.returncode != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                raise DockerError(f"pip {what} of the image's wheels ({lock_file.name}) failed: {_tail(p.stderr, 10)}")
        (tmp / "COMPLETE").write_text("\n".join(pins) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        for old in out.parent.iterdir():  # an earlier lock's wheels (~250 MB each): the lock changed, drop them
            if old != out and (old / "COMPLETE").exists():
                shutil.rmtree(old, ignore_errors=True)
    return out


def _link_tree(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "COMPLETE":
            try:
                os.link(f, dst / f.name)  # the torch wheel is 190 MB: link, do not copy
            except OSError:
                shutil.copy2(f, dst / f.name)


def build_context(dockerfile: Path, lock_file: Path, ctx: Path, host_wheels: bool = True) -> Path:
    """Assemble a build context: Dockerfile, requirements.txt (the lock), wheels/, src/ (the suite).
    host_wheels False (the CUDA image on a CPU host, which has no CUDA torch): wheels/ holds only a note, and the
    Dockerfile resolves the lock from the index."""
    ctx.mkdir(parents=True, exist_ok=True)
    shutil.copy2(dockerfile, ctx / "Dockerfile")
    shutil.copy2(lock_file, ctx / "requirements.txt")
    if host_wheels:
        _link_tree(wheels_for(lock_file), ctx / "wheels")
    else:
        (ctx / "wheels").mkdir()
        (ctx / "wheels" / "README").write_text("no host wheels: pip resolves requirements.txt from its index\n")
    src = ctx / "src"
    shutil.copytree(ROOT / "impl", src / "impl", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in SUITE_FILES:
        p = ROOT / name
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if p.is_dir() else shutil.copy2)(p, src / name)
    return ctx


def context_hash(ctx: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in ctx.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(ctx)).encode())
        if f.suffix == ".whl":  # a wheel is named by its version; hashing 190 MB each build is not needed
            h.update(str(f.stat().st_size).encode())
        else:
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")


def docker_build(d: Docker, ctx: Path, tag: str, build_args: dict | None = None, timeout: float = 900) -> dict:
    """`docker build` (legacy builder); a failing step raises BuildError naming the step with its log's tail."""
    args = ["build", "--rm", "--force-rm", "-t", tag]
    for k, v in (build_args or {}).items():
        args += ["--build-arg", f"{k}={v}"]
    t0 = time.monotonic()
    p = d.cmd(*args, str(ctx), timeout=timeout, check=False)
    log = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
    # the intermediate images this build made (the build stage's chain is untagged once the tag goes): removed
    # with the tag unless kept. A FROM step's id is the base image's, and a step printed after "Using cache" is an
    # image an earlier build made (perhaps the chain of a kept image): neither is this build's to remove
    layers, skip = [], False
    for line in log.splitlines():
        if _STEP.match(line):
            skip = " : FROM " in line
        elif line.strip() == "---> Using cache":
            skip = True
        elif line.startswith(" ---> ") and not skip and re.fullmatch(r"[0-9a-f]{12}", line[6:].strip()):
            layers.append(line[6:].strip())
    d.made["layers"] += layers
    if p.returncode != 0:
        steps = [m for m in (_STEP.match(l) for l in log.splitlines()) if m]
        where = f"step {steps[-1][1]}/{steps[-1][2]} ({steps[-1][3][:120]})" if steps else "before its first step"
        raise BuildError(f"docker build of {tag} failed at {where}; the log's last lines:\n{_tail(log, 20)}")
    if tag not in d.made["images"]:
        d.made["images"].append(tag)
    steps = sum(1 for l in log.splitlines() if _STEP.match(l))
    cached = log.count("---> Using cache")
    return {"image": tag, "build_s": round(time.monotonic() - t0, 1), "build_steps": steps, "steps_cached": cached}


def build_image(spec=None, d: Docker | None = None, *, flavor: str | None = None, base_image: str | None = None,
                keep: bool = True, timeout: float = 1200) -> dict:
    """Build deploy/docker/Dockerfile.<flavor> into llm-milestones:<flavor>-<context hash>.

    base_image None: the debootstrap base (made once, kept); any other value is passed as BASE_IMAGE.
    keep: leave the tag (the CLI); False: a tag unique to this session (llm-milestones:<flavor>-<hash>-tmp-<owner>),
    removed with the rest of the session's objects (the tests); an image that also carries another tag stays.
    `spec`: a W21Spec (its `container` section) or a ContainerSpec gives flavor and base_image unless passed."""
    if spec is not None and getattr(spec, "container", spec) is not None:
        from impl.w21_infra.image import container_spec

        c = container_spec(spec)
        flavor = flavor or c.flavor
        base_image = base_image if base_image is not None else c.base_image
    flavor = flavor or "cpu"
    own = d is None
    d = d or connect()
    try:
        info = {}
        if base_image is None:
            info.update(ensure_base(d))
            base_image = BASE_TAG
        dockerfile = DOCKER_DIR / f"Dockerfile.{flavor}"
        lock = DOCKER_DIR / f"requirements-{flavor}.txt"
        if not dockerfile.exists() or not lock.exists():
            raise DockerError(f"no {dockerfile} / {lock}: flavors are cpu and cuda")
        with tempfile.TemporaryDirectory(prefix="llmm-ctx-") as tmp:
            t0 = time.monotonic()
            ctx = build_context(dockerfile, lock, Path(tmp) / "ctx", host_wheels=flavor == "cpu")
            info["context_s"] = round(time.monotonic() - t0, 1)
            # keep=False: a tag of this session's own, never the one `deploy build` keeps for the same content
            # (removing a shared tag would take a user's image away)
            tag = f"{IMAGE_REPO}:{flavor}-{context_hash(ctx)}" + ("" if keep else f"-tmp-{d.owner}")
            info.update(docker_build(d, ctx, tag, {"BASE_IMAGE": base_image}, timeout=timeout))
        if keep:
            d.made["images"].remove(tag)
            d.made["layers"] = []  # the build cache stays with the kept image
            # and under the name the rendered manifests use (cluster.image: llm-milestones:cpu)
            d.cmd("tag", tag, f"{IMAGE_REPO}:{flavor}")
            info["also_tagged"] = f"{IMAGE_REPO}:{flavor}"
        info["image_size_mb"] = round(d.image_size_mb(tag), 1)
        info["base_image"] = base_image
        version = d.cmd("version", "--format", "{{.Server.Version}}", check=False).stdout.decode().strip()
        who = "the suite's own dockerd" if d.started_by_suite else d.host
        info["daemon"] = f"{who} (Docker {version or '?'}, legacy builder)"
        return info
    finally:
        if own:
            release(d)


def write_lock(flavor: str = "cpu") -> Path:
    """Regenerate deploy/docker/requirements-<flavor>.txt from this venv, keeping its comment header."""
    path = DOCKER_DIR / f"requirements-{flavor}.txt"
    head = [l for l in path.read_text().splitlines() if l.startswith("#")] if path.exists() else []
    pins = host_lock(IMAGE_PACKAGES)
    if flavor == "cuda":  # the CUDA build of the same torch: the index resolves its pinned nvidia-* wheels
        pins = [p.split("+")[0] if p.startswith("torch==") else p for p in pins]
    path.write_text("\n".join(head + pins) + "\n")
    return path


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="regenerate an image's lock from this venv")
    ap.add_argument("--lock", choices=["cpu", "cuda"], required=True)
    print(write_lock(ap.parse_args().lock))
