"""Two hosts on one Linux machine: two network namespaces joined by a veth pair (needs root and `ip`).

    from impl.w21_infra.netns import two_hosts
    with two_hosts() as hosts:                     # namespaces w21h0-<pid>-<n>, w21h1-<pid>-<n>
        hosts[0].addr                              # 10.77.0.1 (inside namespace 0 only)
        subprocess.run(hosts[1].wrap(["python", "-c", "..."]))   # runs inside namespace 1

Each namespace has its own loopback and one end of the veth pair; gloo is told to use that end
(GLOO_SOCKET_IFNAME), since the hostname resolves to 127.0.0.1. The addresses exist only inside the namespaces:
from the root namespace, packets to them would leave by the default route. Namespace names carry the pid and a
counter, veth names (w21v<i>-<8 random hex>, 14 characters) a random suffix, so two pytest-xdist workers (or two
tests) never share one; leaving the `with` (also on an exception) kills what still runs inside and deletes both
namespaces, which deletes the veth pair with them. Each namespace's maker is recorded under
/run/llm-milestones-netns (boot id, PID namespace, pid): a later run deletes only those a dead process of the same
boot and PID namespace left behind.
"""
from __future__ import annotations

import functools
import itertools
import os
import secrets
import shutil
import signal
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from impl.core.errors import MilestonesError


class NetnsError(MilestonesError):
    pass


PREFIX = "w21h"
_counter = itertools.count()
# who made each namespace: "<boot id> <pid namespace> <pid>", one file per namespace (removed with it), so that a
# later run deletes only namespaces left by a dead process of this same boot and PID namespace
OWNERS = Path("/run/llm-milestones-netns")


def _owner() -> str:
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return f"{boot} {os.readlink('/proc/self/ns/pid')} {os.getpid()}"


@dataclass(frozen=True)
class Host:
    index: int
    netns: str
    ifname: str  # this host's end of the veth pair
    addr: str

    def wrap(self, cmd: list[str], env: dict[str, str] | None = None) -> list[str]:
        """`cmd` run inside this host's namespace, gloo bound to its veth end."""
        extra = [f"{k}={v}" for k, v in {"GLOO_SOCKET_IFNAME": self.ifname, **(env or {})}.items()]
        return ["ip", "netns", "exec", self.netns, "env", *extra, *cmd]


@functools.lru_cache(maxsize=1)
def why_unavailable() -> str | None:
    """Why network namespaces cannot be made here (the checks skip with it), or None when they can. Root and `ip`
    are not enough (an unprivileged container has both): a namespace is made and deleted to find out."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) on this machine"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"{PREFIX}probe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode:
        return f"`ip netns add` fails here (an unprivileged container?): {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode:
        raise NetnsError(f"`ip {' '.join(args)}` failed: {r.stderr.strip()}")


def pids_in(netns: str) -> list[int]:
    r = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()] if r.returncode == 0 else []


def kill_all_in(netns: str) -> None:
    """SIGKILL every process inside the namespace: what a host's power loss does to its processes."""
    for pid in pids_in(netns):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def remove(netns: str) -> None:
    kill_all_in(netns)
    r = subprocess.run(["ip", "netns", "del", netns], capture_output=True)  # also deletes its veth end and the peer
    if r.returncode == 0 or not exists(netns):
        (OWNERS / netns).unlink(missing_ok=True)


def stale() -> list[str]:
    """This suite's namespaces whose creating process is gone (a run killed before its `finally`): only those whose
    owner record names this boot and this PID namespace, and whose pid no longer runs. A namespace without a record,
    or made from another PID namespace (another container sharing /run) or boot, is left alone."""
    found = []
    boot, pidns, _ = _owner().split(" ")
    for path in Path("/run/netns").glob(f"{PREFIX}*"):
        try:
            o_boot, o_pidns, o_pid = (OWNERS / path.name).read_text().split()
            pid = int(o_pid)
        except (OSError, ValueError):
            continue
        if o_boot == boot and o_pidns == pidns and not Path(f"/proc/{pid}").exists():
            found.append(path.name)
    return found


@contextmanager
def two_hosts(subnet: str = "10.77.0"):
    why = why_unavailable()
    if why:
        raise NetnsError(f"cannot make two hosts from network namespaces: {why}")
    for name in stale():
        remove(name)
    n = next(_counter)
    tag = f"{os.getpid()}-{n}"
    # veth names live in the root namespace (15 characters at most): a random suffix, never one derived from the
    # pid, which two workers (or two PID namespaces) can share modulo anything
    suffix = secrets.token_hex(4)
    hosts = [Host(i, f"{PREFIX}{i}-{tag}", f"w21v{i}-{suffix}", f"{subnet}.{i + 1}") for i in range(2)]
    owner = _owner()
    try:
        OWNERS.mkdir(parents=True, exist_ok=True)
        for h in hosts:
            (OWNERS / h.netns).write_text(owner + "\n")
            _ip("netns", "add", h.netns)
        _ip("link", "add", hosts[0].ifname, "type", "veth", "peer", "name", hosts[1].ifname)
        for h in hosts:
            _ip("link", "set", h.ifname, "netns", h.netns)
            _ip("-n", h.netns, "addr", "add", f"{h.addr}/24", "dev", h.ifname)
            _ip("-n", h.netns, "link", "set", "lo", "up")
            _ip("-n", h.netns, "link", "set", h.ifname, "up")
        yield hosts
    finally:
        for h in hosts:
            remove(h.netns)
        # a veth end left in the root namespace (a failure between `link add` and `link set netns`)
        subprocess.run(["ip", "link", "del", hosts[0].ifname], capture_output=True)


def exists(netns: str) -> bool:
    return Path("/run/netns", netns).exists()
