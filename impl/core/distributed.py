"""Launching and joining multi-process runs the way users do: `torchrun`, NCCL on GPUs and gloo on CPUs."""
from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from impl.core.errors import MilestonesError


class DistributedError(MilestonesError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(module: str, args: list[str], nproc: int, timeout_s: float, log_path: Path,
             env: dict[str, str] | None = None, expect: Path | None = None) -> None:
    """Run `torchrun --nproc_per_node=N -m module args`; raise with the ranks' output on failure, on time-out,
    or when the run exits cleanly without writing `expect`.

    The whole process group is killed on time-out, so a hung rank never hangs the caller.
    """
    nnodes = int(os.environ.get("NNODES", "1"))
    if nnodes > 1:  # every node runs this under the user's launcher, which sets the rendezvous
        where = [f"--nnodes={nnodes}", f"--node_rank={os.environ['NODE_RANK']}",
                 f"--master_addr={os.environ['MASTER_ADDR']}", f"--master_port={os.environ.get('MASTER_PORT', '29500')}"]
    else:
        where = ["--master_addr=127.0.0.1", f"--master_port={free_port()}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *where, "-m", module, *args]
    full_env = {**os.environ, **(env or {}), "OMP_NUM_THREADS": os.environ.get(
        "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            kill_tree(proc)
            raise DistributedError(f"{' '.join(cmd)} timed out after {timeout_s:.0f} s; output:\n{_tail(log_path)}") from None
        except BaseException:  # interrupted: never leave ranks behind
            kill_tree(proc)
            raise
    if rc != 0:
        raise DistributedError(f"{' '.join(cmd)} exited with {rc}; output:\n{_tail(log_path)}")
    if expect is not None and not expect.exists():
        raise DistributedError(f"{' '.join(cmd)} exited cleanly but wrote no {expect}; output:\n{_tail(log_path)}")


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (Linux): torchrun starts each rank in a session of its own, so killing
    torchrun's process group leaves a hung rank running."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a launcher, its process group and every process below it, whatever session they started."""
    below = descendants(proc.pid)  # before the launcher dies and its children move to init
    for pid in below:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:]


def init_from_env() -> tuple[int, int, torch.device]:
    """Join the process group torchrun set up (or none); return (rank, world_size, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def leave() -> None:
    """End a torchrun rank after its work (results written, process group destroyed) without the interpreter's
    finalisation: with torch 2.13's gloo about one 2-rank run in ten aborted there ("terminate called without an
    active exception", no Python frame; w05 and w13 both), failing a run that had finished."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 to clear_refs resets VmHWM (peak RSS) to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as e:  # not Linux, or a read-only /proc: say so, since the number then means something else
        warnings.warn(f"cannot reset the peak RSS ({e}): peak memory covers the whole process, not this step",
                      RuntimeWarning, stacklevel=2)


def peak_memory_mb(device: torch.device) -> float:
    """GPU: peak bytes allocated by torch. CPU: peak RSS of the process (torch's libraries included, ~hundreds
    of MB, so at toy scale counting the bytes of the tensors shows sharding better)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def per_rank(value: float, device: torch.device) -> list[float]:
    """[value of rank 0, value of rank 1, ...] on every rank."""
    t = torch.zeros(dist.get_world_size(), dtype=torch.float64, device=device)
    t[dist.get_rank()] = value
    dist.all_reduce(t)
    return t.tolist()


