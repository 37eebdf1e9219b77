"""The Docker daemon w21 uses, and the `Docker` handle that removes what a session made.

    from impl.w21_infra import daemon
    with daemon.session() as d:                        # finds or starts dockerd; removes what it made on exit
        d.run_container(image, ["profiles"])

Daemon: DOCKER_HOST when set (never started by the suite: a missing one is an error), else a daemon answering on
/var/run/docker.sock, else (as root, with Debian's docker.io installed) the suite starts its own `dockerd` with its
own socket, pidfile, data-root and exec-root, and stops it when the last process of the suite using it leaves.
Processes register under a file lock (pytest-xdist runs a fast-test module and the acceptance module at once).
A daemon the suite did not start must see this machine's files (the container check bind-mounts the fixture
cache): `why_unavailable()` probes that, since a socket mounted from another host or container does not.
"""
from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from impl.core.errors import MilestonesError

LABEL = "org.llm-milestones.owner"  # every container / network the suite makes carries it: <pid>-<session>
# the suite's own daemon (only when none is running): state kept under /var/lib so the base image survives restarts
STATE = Path(os.environ.get("LLM_MILESTONES_DOCKER_STATE", "/var/lib/llm-milestones-docker"))
SOCKET = Path("/run/llm-milestones-docker/docker.sock")
SYSTEM_SOCKET = Path("/var/run/docker.sock")


class DockerError(MilestonesError):
    pass


class DaemonMissing(DockerError):
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


def tail(text: str, lines: int = 25) -> str:
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
                              f"{tail(out)}") from None
        if check and p.returncode != 0:
            raise DockerError(f"`docker {' '.join(args[:4])} ...` failed (exit {p.returncode}): "
                              f"{tail(p.stderr.decode(errors='replace') or p.stdout.decode(errors='replace'))}")
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
    return p.returncode == 0 and bool(p.stdout.strip()), tail(p.stderr, 3)


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
                                f"{tail((STATE / 'dockerd.log').read_text(errors='replace'), 15)}")
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


def why_unavailable() -> str | None:
    """Why the suite cannot run containers here (a skip reason), or None when it can: a daemon it may use sees
    this machine's files, or the suite can start its own."""
    if shutil.which("docker") is None:
        return "no `docker` command (Debian's docker.io; bootstrap.sh installs it as root)"
    for host in ([os.environ["DOCKER_HOST"]] if os.environ.get("DOCKER_HOST")
                 else [f"unix://{SYSTEM_SOCKET}"] if SYSTEM_SOCKET.exists() else []):
        if not _answers(host, 10)[0]:
            return None  # expected there but silent: connect() says so as one clear error, not as a skip
        return _blind_to_local_files(Docker(host))
    if _answers(f"unix://{SOCKET}", 5)[0]:
        return None  # the suite's own, on this machine
    if shutil.which("dockerd") is None:
        return "no Docker daemon running and no `dockerd` to start (apt-get install docker.io)"
    if os.geteuid() != 0:
        return "no Docker daemon running, and only root can start dockerd"
    return None


def _blind_to_local_files(d: Docker) -> str | None:
    """A daemon on another host, or behind a socket mounted from one, answers but cannot bind-mount this machine's
    paths (the container check mounts the fixture cache): ask it to create a container bind-mounting a directory
    made just now. The image is an empty one imported for the probe (no registry needed); nothing is started."""
    from impl.core.fixtures import cache_dir

    probe = cache_dir() / f".daemon-sees-{os.getpid()}-{time.monotonic_ns()}"
    probe.mkdir(parents=True)
    image, name = d.name("probe-image").replace("-", ""), d.name("probe")
    try:
        empty_tar = subprocess.run(["tar", "-c", "-f", "-", "-T", "/dev/null"], capture_output=True).stdout
        made = d.cmd("import", "-", f"{image}:probe", input=empty_tar, check=False, timeout=60)
        if made.returncode != 0:
            return f"the Docker daemon at {d.host} cannot import an image: {tail(made.stderr.decode(), 3)}"
        created = d.cmd("create", "--name", name, "--label", f"{LABEL}={d.owner}", "--network", "none",
                        "--mount", f"type=bind,source={probe},target=/probe,readonly", f"{image}:probe", "/probe",
                        check=False, timeout=60)
        if created.returncode != 0:
            return (f"the Docker daemon at {d.host} cannot see this machine's files (a bind mount of {probe} "
                    f"failed: {tail(created.stderr.decode(), 2)}); a socket mounted from another host or container "
                    "cannot run the container check: unset DOCKER_HOST / use a daemon on this machine")
        return None
    finally:
        d.cmd("rm", "-f", name, check=False, timeout=60)
        d.cmd("image", "rm", "-f", f"{image}:probe", check=False, timeout=60)
        probe.rmdir()


def connect() -> Docker:
    """Find a daemon, or start the suite's own; register this process as one of its users."""
    if os.environ.get("DOCKER_HOST"):
        host = os.environ["DOCKER_HOST"]
        ok, why = _answers(host)
        if not ok:
            raise DaemonMissing(f"no Docker daemon answers at DOCKER_HOST={host} ({why}); start it, or unset "
                                f"DOCKER_HOST to let the suite use /var/run/docker.sock or start its own dockerd")
        return Docker(host)
    if SYSTEM_SOCKET.exists() and _answers(f"unix://{SYSTEM_SOCKET}")[0]:
        return Docker(f"unix://{SYSTEM_SOCKET}")
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

