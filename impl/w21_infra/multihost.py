"""w21's multi-node runs on one machine: two network namespaces as two hosts, each launching its own node rank.

    from impl.core.artifacts import Runs
    from impl.w21_infra import multihost
    p = multihost.parity(spec, Runs("w21", "cpu"))         # 1 host vs 2 hosts, same global batch; tokens/s
    f = multihost.fault_and_resume(spec, runs, p["two_host"])   # host 1 killed mid-step, reported, resumed
    python -m impl deploy run --profile cpu                # the same from the command line

Each host runs `torchrun --nnodes 2 --node-rank i ...` (or `deepspeed --no_ssh --node_rank i ...`) inside its
namespace, exactly the per-node command of an SSH cluster (manifests.launch_commands), with
impl/w21_infra/worker.py as the training process: w05's GPT and ZeRO-2 config, gloo over the veth pair. The
run directory is shared by the hosts, as a cluster's shared volume would be (checkpoints, the rank-0 log).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from impl.core.artifacts import Runs, write_json
from impl.core.distributed import DistributedError, kill_tree, torchrun
from impl.core.errors import MilestonesError
from impl.core.profiles import override
from impl.w01_gpt.data import prepare
from impl.w21_infra import netns
from impl.w21_infra.spec import W21Spec
from impl.w21_infra.worker import complete_checkpoint

WORKER = "impl.w21_infra.worker"


class PortInUse(MilestonesError):
    pass


def _read(run_dir: Path, suffix: str = "", reused: bool = False) -> dict:
    """A finished run's metrics and curve; `reused`: found complete (--reuse-artifacts), not run by this call."""
    m = json.loads((run_dir / f"metrics{suffix}.json").read_text())
    log = [json.loads(line) for line in (run_dir / f"train_log{suffix}.jsonl").read_text().splitlines()]
    return {**m, "curve": [(x["step"], x["loss"]) for x in log], "run_dir": str(run_dir), "reused": reused}


def _job(spec: W21Spec, gpt=None, **extra) -> dict:
    return {"gpt": (gpt or spec.gpt).model_dump(), **extra}


def _env() -> dict:
    # one thread per process: the hosts share this machine's cores (set OMP_NUM_THREADS to change it)
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONUNBUFFERED": "1"}


def single_host(spec: W21Spec, runs: Runs, timeout_s: float | None = None) -> dict:
    """The reference: one host, `hosts.nproc_per_host` processes, the same global batch."""
    gpt = override(spec.gpt, train={"nproc": spec.hosts.nproc_per_host})
    job = _job(spec, gpt)
    run_dir = runs.dir_for({**job, "kind": "single_host"}, name="single_host")
    reused = (run_dir / "metrics.json").exists()
    if not reused:
        write_json(run_dir / "job.json", job)
        prepare(gpt.data, gpt.tokenizer)  # the token cache, built once before the ranks need it
        torchrun(WORKER, ["--run-dir", str(run_dir)], spec.hosts.nproc_per_host, timeout_s or spec.hosts.timeout_s,
                 run_dir / "torchrun.log", env={"OMP_NUM_THREADS": _env()["OMP_NUM_THREADS"]},
                 expect=run_dir / "metrics.json")
    return _read(run_dir, reused=reused)


def node_command(spec: W21Spec, node_rank: int, master_addr: str, port: int, run_dir: Path,
                 hostfile: Path | None = None) -> list[str]:
    """What one host runs to join the job as node `node_rank` (the SSH-cluster form, --no_ssh for deepspeed)."""
    h = spec.hosts
    if h.launcher == "torchrun":
        launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(h.count), "--node-rank",
                  str(node_rank), "--nproc-per-node", str(h.nproc_per_host), "--master-addr", master_addr,
                  "--master-port", str(port), "-m", WORKER]
    else:
        launch = [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile), "--no_ssh",
                  "--node_rank", str(node_rank), "--num_nodes", str(h.count), "--master_addr", master_addr,
                  "--master_port", str(port), "--module", WORKER]
    return [*launch, "--run-dir", str(run_dir)]


def check_port_free(host: netns.Host, port: int) -> None:
    """One clear error before launching when the master's rendezvous port is taken on host 0."""
    # IPv4's wildcard always (the rendezvous is IPv4 here); IPv6's only where the namespace has it (a kernel or
    # namespace with IPv6 disabled refuses the socket or the address: that is not a port in use).
    # SO_REUSEADDR: a socket left in TIME_WAIT is no conflict, a listening one still is.
    probe = ("import errno,socket,sys\nport=int(sys.argv[1])\n"
             "for fam,addr in ((socket.AF_INET,'0.0.0.0'),(socket.AF_INET6,'::')):\n"
             "    try:\n        s=socket.socket(fam)\n    except OSError:\n        continue\n"
             "    try:\n        s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
             "        if fam==socket.AF_INET6:\n            s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,1)\n"
             "        s.bind((addr,port))\n    except OSError as e:\n"
             "        if e.errno==errno.EADDRINUSE:\n            print(e); sys.exit(3)\n"
             "        if fam==socket.AF_INET:\n            raise\n    finally:\n        s.close()\n")
    r = subprocess.run(["ip", "netns", "exec", host.netns, sys.executable, "-c", probe, str(port)],
                       capture_output=True, text=True)
    if r.returncode == 3:
        raise PortInUse(f"port {port} is already in use on host 0 ({host.addr}, the master): {r.stdout.strip()}. "
                        "Another job's rendezvous may be running there; set w21.hosts.master_port to a free port")
    if r.returncode:
        raise netns.NetnsError(f"cannot probe port {port} on host 0: {r.stderr.strip()}")


class Launch:
    """Both hosts' launchers, started at once, each inside its namespace; killed (with everything left inside
    the namespaces) when the caller leaves, whatever happened."""

    def __init__(self, spec: W21Spec, hosts: list[netns.Host], run_dir: Path, port: int, tag: str):
        self.hosts, self.run_dir, self.tag = hosts, run_dir, tag
        hostfile = None
        if spec.hosts.launcher == "deepspeed":
            hostfile = run_dir / "hostfile"
            hostfile.write_text("".join(f"{h.addr} slots={spec.hosts.nproc_per_host}\n" for h in hosts))
        self.commands = [node_command(spec, h.index, hosts[0].addr, port, run_dir, hostfile) for h in hosts]
        self.logs = [run_dir / f"host{h.index}{tag}.log" for h in hosts]
        self.procs: list[subprocess.Popen] = []

    def __enter__(self):
        for h, cmd, log in zip(self.hosts, self.commands, self.logs):
            with open(log, "w") as f:
                self.procs.append(subprocess.Popen(h.wrap(cmd), stdout=f, stderr=subprocess.STDOUT, env=_env(),
                                                   start_new_session=True))
        return self

    def __exit__(self, *exc):
        for p, h in zip(self.procs, self.hosts):
            if p.poll() is None:
                kill_tree(p)
            netns.kill_all_in(h.netns)

    def tail(self, i: int, chars: int = 3000) -> str:
        return self.logs[i].read_text(errors="replace")[-chars:]

    def wait(self, timeout_s: float) -> None:
        """Both launchers must exit 0; the first failure stops the other; nothing waits past `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            codes = [p.poll() for p in self.procs]
            failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                i = failed[0]
                raise DistributedError(f"host {i}'s launcher exited with {codes[i]}:\n{self.tail(i)}")
            if all(c == 0 for c in codes):
                return
            if time.monotonic() > deadline:
                raise DistributedError(f"the two-host run did not finish in {timeout_s:.0f} s; host 0:\n"
                                       f"{self.tail(0)}\nhost 1:\n{self.tail(1)}")
            time.sleep(0.2)


def _two_host_gpt(spec: W21Spec, sabotage: str | None):
    nproc = spec.hosts.count * spec.hosts.nproc_per_host
    if sabotage == "global_batch":  # the twin: each step trains on half the reference's global batch
        return override(spec.gpt, train={"nproc": nproc, "batch_size": spec.gpt.train.batch_size // 2})
    return override(spec.gpt, train={"nproc": nproc})


def two_host(spec: W21Spec, runs: Runs, sabotage: str | None = None, master_port: int | None = None,
             hosts: list[netns.Host] | None = None) -> dict:
    """The run on two hosts, each launching its node rank. Sabotage twins: "global_batch" (half the global
    batch), "same_shard" (every rank trains on rank 0's slice: the all-reduce averages identical gradients)."""
    if sabotage not in (None, "global_batch", "same_shard"):
        raise ValueError(f"sabotage must be None, 'global_batch' or 'same_shard'; got {sabotage!r}")
    gpt = _two_host_gpt(spec, sabotage)
    job = _job(spec, gpt, same_shard=sabotage == "same_shard")
    run_dir = runs.dir_for({**job, "kind": "two_host", "launcher": spec.hosts.launcher}, name="two_host")
    if (run_dir / "metrics.json").exists():
        return _read(run_dir, reused=True)
    write_json(run_dir / "job.json", job)
    prepare(gpt.data, gpt.tokenizer)
    port = master_port or spec.hosts.master_port
    if hosts is None:
        with netns.two_hosts(spec.hosts.subnet) as made:
            return _two_host_in(spec, made, run_dir, port)
    return _two_host_in(spec, hosts, run_dir, port)


def _two_host_in(spec: W21Spec, hosts, run_dir: Path, port: int) -> dict:
    check_port_free(hosts[0], port)
    with Launch(spec, hosts, run_dir, port, "") as launch:
        write_json(run_dir / "commands.json", launch.commands)
        launch.wait(spec.hosts.timeout_s)
    if not (run_dir / "metrics.json").exists():
        raise DistributedError(f"the two-host run exited cleanly but wrote no metrics.json:\n{launch.tail(0)}")
    return _read(run_dir)


def max_loss_diff(a: list, b: list) -> float:
    if [s for s, _ in a] != [s for s, _ in b]:
        raise MilestonesError(f"the curves log different steps: {[s for s, _ in a]} vs {[s for s, _ in b]}")
    return max(abs(x - y) for (_, x), (_, y) in zip(a, b))


def scaling_note(one: dict, two: dict, efficiency: float) -> str:
    cores = os.cpu_count()
    return (f"{efficiency:.2f} = (2-host tokens/s {two['train_tokens_per_s']:.0f}) / (2 x 1-host tokens/s "
            f"{one['train_tokens_per_s']:.0f}). Both 'hosts' are namespaces of one machine with {cores} cores, "
            f"shared with whatever else runs (other test workers): each host's process has 1 thread, so two hosts "
            f"can at best use two cores where one host used one. The veth pair is a memory copy, so what a real "
            f"network would cost is absent; what remains is the per-step ZeRO-2 reduce-scatter and all-gather of "
            f"{two['params']:,} fp32 parameters through gloo, the hosts waiting for each other at every step, and "
            f"contention for the cores and memory bandwidth. The two runs are measured one after the other, so "
            f"load from other work that changes between them moves the number either way (above 1: the 1-host "
            f"run was slowed more; each process of the 2-host run also works on half the sequences, whose activations "
            f"may sit better in the caches). On a real cluster the interconnect decides it.")


def parity(spec: W21Spec, runs: Runs, sabotage: str | None = None) -> dict:
    """The single-host reference, then the two-host run of the same global batch (one after the other, so that
    each one's tokens/s is its own)."""
    one = single_host(spec, runs)
    two = two_host(spec, runs, sabotage=sabotage)
    efficiency = two["train_tokens_per_s"] / (spec.hosts.count * one["train_tokens_per_s"])
    return {
        "single_host": one, "two_host": two, "max_loss_diff": max_loss_diff(one["curve"], two["curve"]),
        "hosts": spec.hosts.count, "nproc_per_host": spec.hosts.nproc_per_host, "launcher": spec.hosts.launcher,
        "network": f"2 network namespaces joined by a veth pair ({spec.hosts.subnet}.0/24), gloo",
        "steps": spec.gpt.train.steps, "scaling_efficiency": efficiency,
        "scaling_note": scaling_note(one, two, efficiency), "sabotage": sabotage,
        "commands": json.loads((Path(two["run_dir"]) / "commands.json").read_text())
        if (Path(two["run_dir"]) / "commands.json").exists() else None,
    }


def kill_point(spec: W21Spec) -> tuple[int, float]:
    """The seeded fault: (step, fraction). Host 1 dies in training step `step` (0-based, from
    `fault.checkpoint_every`, so a checkpoint exists, to steps - 2, so a step remains), `fraction` of its previous
    step's duration after it started the step: during the forward, the collectives, or a checkpoint's save."""
    f, steps = spec.fault, spec.gpt.train.steps
    rng = random.Random(f"w21 fault {f.seed}")
    return rng.randint(f.checkpoint_every, steps - 2), rng.random()


def fault_and_resume(spec: W21Spec, runs: Runs, uninterrupted: dict | None = None, sabotage: str | None = None) -> dict:
    """Host 1 is killed during a training step (kill_point; its processes SIGKILLed, as a host's power loss would);
    the time until host 0's launcher exits with the error is measured (inf when it is still running
    `fault.detect_timeout_s` after the kill); then both hosts relaunch, resuming from the last checkpoint found
    complete on disk, and run to the end. `uninterrupted` is the plain two-host run of the same spec (made here
    when not given). Sabotage twins: "fresh_weights", the relaunch starts at the checkpoint's step with freshly
    initialised weights and optimizer (a resume that loads nothing); "freeze", host 1 is stopped (SIGSTOP: a hung
    host, its sockets left open) instead of killed, which host 0 never notices."""
    if sabotage not in (None, "fresh_weights", "freeze"):
        raise ValueError(f"sabotage must be None, 'fresh_weights' or 'freeze'; got {sabotage!r}")
    uninterrupted = two_host(spec, runs) if uninterrupted is None else uninterrupted
    f = spec.fault
    gpt = _two_host_gpt(spec, None)
    base = _job(spec, gpt, checkpoint_every=f.checkpoint_every)
    run_dir = runs.dir_for({**base, "kind": "fault", "fault": f.model_dump(), "launcher": spec.hosts.launcher,
                            "nproc_per_host": spec.hosts.nproc_per_host, "sabotage": sabotage}, name="fault")
    reused = (run_dir / "fault.json").exists()
    if not reused:
        # an interrupted earlier attempt: nothing of it may stand in for this one (stale progress would have host 1
        # killed at once; stale checkpoints, logs and metrics would be read as this run's)
        for stale in ("checkpoints", "progress"):
            shutil.rmtree(run_dir / stale, ignore_errors=True)
        for stale in ["metrics.json", *(f"{kind}{tag}.{ext}" for tag in ("_killed", "_resumed")
                                        for kind, ext in (("train_log", "jsonl"), ("metrics", "json"),
                                                          ("host0", "log"), ("host1", "log")))]:
            (run_dir / stale).unlink(missing_ok=True)
        prepare(gpt.data, gpt.tokenizer)
        with netns.two_hosts(spec.hosts.subnet) as hosts:
            port = spec.hosts.master_port
            check_port_free(hosts[0], port)
            write_json(run_dir / "job.json", {**base, "log_suffix": "_killed"})
            fault = _kill_host_1(spec, hosts, run_dir, port, freeze=sabotage == "freeze")
            # what the relaunch must resume from: the newest checkpoint every rank finished writing
            found = complete_checkpoint(run_dir / "checkpoints")
            fault["resume_tag"], fault["expected_resume_step"] = found if found else (None, None)
            # require_checkpoint: a relaunch that finds no checkpoint fails instead of starting at step 0
            write_json(run_dir / "job.json", {**base, "resume": True, "require_checkpoint": True,
                                              "log_suffix": "_resumed", "fresh_weights": sabotage == "fresh_weights"})
            with Launch(spec, hosts, run_dir, port, "_resumed") as launch:
                launch.wait(spec.hosts.timeout_s)
        write_json(run_dir / "fault.json", fault)
        write_json(run_dir / "metrics.json", {"detect_seconds": fault["detect_seconds"]})  # --reuse-artifacts finds it
    fault = json.loads((run_dir / "fault.json").read_text())
    resumed = _read(run_dir, "_resumed")
    killed = _read_log(run_dir / "train_log_killed.jsonl")
    ref = dict(uninterrupted["curve"])
    after = resumed["curve"]
    return {
        **fault,
        "final_loss_diff": abs(after[-1][1] - ref[after[-1][0]]),
        "max_loss_diff_after_resume": max(abs(v - ref[s]) for s, v in after),
        # the killed run's steps up to the checkpoint, then the resumed run's (steps after the checkpoint ran twice)
        "resumed_curve": [(s, v) for s, v in killed if s < resumed["start_step"]] + after,
        "killed_run_curve": killed, "resumed_from_step": resumed["start_step"], "hosts": resumed["hosts"],
        "world_size": resumed["world_size"], "detect_timeout_s": f.detect_timeout_s,
        "checkpoint_every": f.checkpoint_every, "run_dir": str(run_dir), "sabotage": sabotage, "reused": reused,
    }


def _read_log(path: Path) -> list:
    if not path.exists():
        return []
    return [(x["step"], x["loss"]) for x in map(json.loads, path.read_text().splitlines())]


def _progress(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _kill_host_1(spec: W21Spec, hosts, run_dir: Path, port: int, freeze: bool = False) -> dict:
    """Launch both hosts; when host 1 reports the seeded step (progress/node1.json), wait the seeded part of a
    step, kill every process of host 1 and time host 0's launcher's exit."""
    f = spec.fault
    step, fraction = kill_point(spec)
    report_path = run_dir / "progress" / "node1.json"
    with Launch(spec, hosts, run_dir, port, "_killed") as launch:
        deadline = time.monotonic() + spec.hosts.timeout_s
        while (report := _progress(report_path)) is None or report["step"] < step:
            if any(p.poll() is not None for p in launch.procs):
                reports = sorted(p.name for p in (run_dir / "progress").glob("node*.json"))
                raise DistributedError(f"a host exited before host 1 reached step {step}, where it was to be killed "
                                       f"(progress reports: {reports or 'none'}):\nhost 0:\n{launch.tail(0)}\n"
                                       f"host 1:\n{launch.tail(1)}")
            if time.monotonic() > deadline:
                raise DistributedError(f"host 1 never reported step {step} (progress/node1.json):\n{launch.tail(1)}")
            time.sleep(0.005)
        # the report must come from host 1's namespace: a worker with a wrong node rank (a process of host 0
        # reporting as node 1) would have the wrong host's progress decide the kill
        if report["pid"] not in netns.pids_in(hosts[1].netns):
            raise DistributedError(f"node 1's progress report came from pid {report['pid']}, which is not a process "
                                   f"of host 1 ({hosts[1].netns}): the workers got their node ranks wrong")
        delay = fraction * (report["last_step_seconds"] or 0.0)
        time.sleep(max(0.0, report["started"] + delay - time.time()))
        if launch.procs[1].poll() is not None or launch.procs[0].poll() is not None:
            raise DistributedError(f"a launcher exited before the kill (the job ended first?):\n{launch.tail(0)}")
        killed_at = time.monotonic()
        for pid in netns.pids_in(hosts[1].netns):  # every process of host 1: its launcher and its ranks
            try:
                os.kill(pid, signal.SIGSTOP if freeze else signal.SIGKILL)
            except ProcessLookupError:
                pass
        during = _progress(report_path)["step"]
        try:
            rc = launch.procs[0].wait(timeout=f.detect_timeout_s)
        except subprocess.TimeoutExpired:
            detect, rc = float("inf"), None
        else:
            detect = time.monotonic() - killed_at
        if rc == 0:
            raise DistributedError(f"host 0's launcher exited 0 although host 1 was killed in step {during}:\n"
                                   f"{launch.tail(0)}")
        if rc is None:
            error = (f"none: host 0's launcher was still running {f.detect_timeout_s:g} s after host 1 was "
                     f"{'stopped' if freeze else 'killed'}")
        else:
            lines = launch.tail(0, 20000).splitlines()
            # the rank's own error (gloo: "Connection closed by peer") first, then the launcher's
            keys = ("Connection closed", "Connection reset", "RuntimeError", "ChildFailedError")
            error = next((line.strip() for key in keys for line in lines if key in line), f"exit code {rc}")[:400]
    # a checkpoint directory newer than the last complete one: the kill landed in its save
    done = complete_checkpoint(run_dir / "checkpoints")
    partial = sorted((p.name for p in (run_dir / "checkpoints").glob("step*")
                      if int(p.name.removeprefix("step")) > (done[1] if done else 0)), key=lambda n: int(n[4:]))
    return {"kill_step": step, "kill_fraction": fraction, "kill_delay_s": delay, "killed_during_step": during,
            "killed_after_step": during - 1, "incomplete_checkpoint": partial[-1] if partial else None,
            "detect_seconds": detect, "launcher_error": error, "host_1": "stopped" if freeze else "killed"}


def free_port_in(host: netns.Host) -> int:
    """A port free on host 0 (asked inside its namespace)."""
    r = subprocess.run(["ip", "netns", "exec", host.netns, sys.executable, "-c",
                        "import socket; s=socket.socket(); s.bind(('', 0)); print(s.getsockname()[1])"],
                       capture_output=True, text=True, check=True)
    return int(r.stdout)

