"""w21's cluster half: sabotage twins of the two-host, fault and manifest checks, the multinode profile's code
path on this CPU, and the errors (a port in use on the master, a killed host, bad input).

The twins use the cpu profile's own targets on w05's GPT shrunk (2 layers, width 32, context 32, a few steps):
a two-host run on half the global batch misses the loss-curve target (its single-host reference runs at the
same time, to save wall time); a resume that loads nothing from the checkpoint misses the resume target; a host
that hangs instead of dying is never noticed and misses the detection target; a manifest with a wrong type or an
unknown field misses the validation target. Every test that makes network namespaces checks they are gone
afterwards, also when the code under test raised.
"""
import copy
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import ValidationError

from impl import adapters
from impl.core.artifacts import Runs
from impl.core.profiles import ProfileError, load_profile, override
from impl.w21_infra import multihost, netns
from impl.w21_infra.manifests import validate_object

CPU = load_profile("cpu").milestone("w21")
TINY = {"model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "context": 32},
        "train": {"steps": 4, "batch_size": 8, "warmup_steps": 1}, "eval": {"stride": 32, "max_tokens": 512}}

needs_netns = pytest.mark.skipif(netns.why_unavailable() is not None,
                                 reason=f"no network namespaces: {netns.why_unavailable()}")


def tiny(**sections):
    """The cpu spec shrunk, launched by torchrun (the manifests' form; the acceptance checks run launch.sh's
    `deepspeed --no_ssh --node_rank i` form, whose two extra processes per host cost ~5 s a launch here)."""
    spec = override(CPU, gpt=TINY, fault={"checkpoint_every": 1}, hosts={"launcher": "torchrun"})
    return override(spec, **sections) if sections else spec  # merged into the shrunk sections


@pytest.fixture
def runs(tmp_path):
    return Runs("w21", "test", root=tmp_path / "artifacts")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The single-host run of the twins' global batch, made in the background while the first twin runs, and
    shared by both twins (the acceptance check shows the two-host run equal to it within 6e-4)."""
    pool = ThreadPoolExecutor(1)
    future = pool.submit(adapters.w21_single_host, tiny(), Runs("w21", "test", root=tmp_path_factory.mktemp("ref")))
    yield _Later(future)
    pool.shutdown(wait=True)


def _mine() -> list[Path]:
    """Namespaces this process made and left behind (none, when cleanup works)."""
    return list(Path("/run/netns").glob(f"{netns.PREFIX}*-{os.getpid()}-*"))


class _Later(dict):
    """A run result still being made: read (for its curve) only when first used."""

    def __init__(self, future):
        super().__init__()
        self.future = future

    def __getitem__(self, key):
        if not len(self):
            self.update(self.future.result())
        return super().__getitem__(key)


# --- sabotage twins ---------------------------------------------------------------------------------------------
@needs_netns
def test_a_two_host_run_on_half_the_global_batch_fails_the_parity_target(runs, reference):
    spec = tiny()
    two = adapters.w21_two_host(spec, runs, sabotage="global_batch")
    assert two["world_size"] == 2 and two["hosts"] == 2
    assert two["tokens_per_step"] == reference["tokens_per_step"] // 2
    diff = multihost.max_loss_diff(reference["curve"], two["curve"])
    assert not CPU.targets["two_host_max_loss_diff"].passes(diff), diff
    assert not _mine()


@needs_netns
def test_a_host_killed_mid_step_is_reported_and_a_resume_that_loads_nothing_fails_the_resume_target(runs, reference):
    spec = tiny()  # the uninterrupted run: the single-host reference of the same global batch
    f = adapters.w21_fault_and_resume(spec, runs, uninterrupted=reference, sabotage="fresh_weights")
    assert f["kill_step"] <= f["killed_during_step"] < spec.gpt.train.steps  # mid-run, not after a hold
    assert f["detect_seconds"] < spec.fault.detect_timeout_s
    assert "Connection closed" in f["launcher_error"] or "Error" in f["launcher_error"], f["launcher_error"]
    # a checkpoint after every step: the last complete one is that of the step host 1 died in (or the next, when
    # it died between marking a checkpoint complete and reporting the next step)
    assert f["resumed_from_step"] == f["expected_resume_step"] in (f["killed_during_step"], f["killed_during_step"] + 1)
    assert not CPU.targets["resume_final_loss_diff"].passes(f["final_loss_diff"]), f["final_loss_diff"]
    assert not _mine()


@needs_netns
def test_a_host_that_hangs_instead_of_dying_is_never_noticed_and_fails_the_detection_target(runs, reference):
    """Host 1 stopped (SIGSTOP: its sockets stay open) rather than killed: host 0 waits in the collective, so after
    the waiting bound (the least the profile allows, twice the target) the detection time is inf, a fail. The job
    (host 0 killed too) then resumes from the last complete checkpoint."""
    target = CPU.targets["fault_detect_seconds"]
    spec = tiny(fault={"detect_timeout_s": 2 * target.threshold})
    f = adapters.w21_fault_and_resume(spec, runs, uninterrupted=reference, sabotage="freeze")
    assert f["detect_seconds"] == float("inf") and not target.passes(f["detect_seconds"])
    assert f["launcher_error"].startswith("none: host 0's launcher was still running"), f["launcher_error"]
    assert f["resumed_from_step"] == f["expected_resume_step"] > 0
    assert not _mine()


@needs_netns
def test_under_deepspeeds_launcher_with_two_processes_per_host_the_run_has_2_hosts_and_host_1_is_killed(
        runs, reference):
    """DeepSpeed's launcher sets CROSS_RANK, CROSS_SIZE and LOCAL_SIZE, not LOCAL_WORLD_SIZE: the node rank must come
    from them, or 4 processes on 2 hosts count as 4 hosts and host 1's progress is reported under another node."""
    spec = tiny(hosts={"launcher": "deepspeed", "nproc_per_host": 2})
    f = adapters.w21_fault_and_resume(spec, runs, uninterrupted=reference)
    assert f["world_size"] == 4 and f["hosts"] == 2
    # one progress report per node, node 1's from host 1's namespace (checked before the kill)
    assert sorted(p.name for p in (Path(f["run_dir"]) / "progress").glob("*.json")) == ["node0.json", "node1.json"]
    assert f["detect_seconds"] < spec.fault.detect_timeout_s
    assert f["resumed_from_step"] == f["expected_resume_step"] in (f["killed_during_step"], f["killed_during_step"] + 1)
    assert not _mine()


def test_the_node_rank_comes_from_torchruns_or_deepspeeds_variables(monkeypatch):
    from impl.w21_infra.worker import node_layout

    for var in ("GROUP_RANK", "GROUP_WORLD_SIZE", "LOCAL_WORLD_SIZE", "CROSS_RANK", "CROSS_SIZE", "LOCAL_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert node_layout(0, 1) == (0, 1)  # one process, no launcher
    with pytest.raises(SystemExit, match="cannot tell which node"):
        node_layout(3, 4)
    # deepspeed 0.19.8's launch.py, rank 3 of 2 nodes x 2 processes
    for k, v in {"CROSS_RANK": "1", "CROSS_SIZE": "2", "LOCAL_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    assert node_layout(3, 4) == (1, 2)
    for k, v in {"GROUP_RANK": "1", "GROUP_WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}.items():  # torchrun's
        monkeypatch.setenv(k, v)
    assert node_layout(2, 4) == (1, 2)


def test_a_manifest_with_a_wrong_type_or_an_unknown_field_fails_validation(tmp_path):
    rendered = adapters.w21_render(CPU, tmp_path / "rendered")
    assert not adapters.w21_validate(CPU, rendered)["invalid"]  # the rendered ones pass
    bad = copy.deepcopy(rendered.objects)
    trainjob, service, job = bad
    trainjob["spec"]["trainer"]["numNodes"] = "two"
    service["spec"]["ports"][0]["port"] = "rendezvous"
    job["spec"]["template"]["spec"]["containers"][0]["cmd"] = ["python"]  # `command` misspelt
    rendered.objects = bad
    report = adapters.w21_validate(CPU, rendered)
    assert set(report["invalid"]) == {"TrainJob/w21-gpt", "Service/w21-gpt", "Job/w21-gpt"}
    assert not CPU.targets["manifests_invalid"].passes(len(report["invalid"]))
    # a TrainJob missing its required runtimeRef, and a name no DNS label allows
    trainjob = copy.deepcopy(rendered.objects[0])
    del trainjob["spec"]["runtimeRef"]
    trainjob["metadata"]["name"] = "W21_GPT"
    problems = validate_object(trainjob, "1.30")
    assert any("runtimeRef" in p for p in problems) and any("DNS-1123" in p for p in problems)


# --- the multinode profile's code path on this CPU ---------------------------------------------------------------
def test_the_multinode_manifests_render_for_2_nodes_x_2_gpus_and_validate(tmp_path):
    spec = load_profile("multinode").milestone("w21")
    rendered = adapters.w21_render(spec, tmp_path / "multinode")
    assert not adapters.w21_validate(spec, rendered)["invalid"]
    trainjob, service, job = rendered.objects
    assert trainjob["spec"]["trainer"]["numNodes"] == 2 and trainjob["spec"]["trainer"]["numProcPerNode"] == 2
    assert trainjob["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "2"
    assert service["spec"]["clusterIP"] == "None" and job["spec"]["completionMode"] == "Indexed"
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"]
    cmd = pod["containers"][0]["command"]
    assert cmd[cmd.index("--master-addr") + 1] == "w21-gpt2-0.w21-gpt2" and "$(NODE_RANK)" in cmd
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "w21-artifacts"
    # checkpoints and the fixture cache from the profile's claims, in the Indexed Job and (runtimePatches) the TrainJob
    claims = {"w21-artifacts": "/artifacts", "w21-data": "/home/app/.cache/llm-milestones"}
    patched = trainjob["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    assert patched["name"] == "node"
    for p, container in ((pod, pod["containers"][0]), (patched["template"]["spec"]["template"]["spec"], None)):
        container = container or p["containers"][0]
        by_name = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in p["volumes"]
                   if "persistentVolumeClaim" in v}
        mounted = {by_name[m["name"]]: m["mountPath"] for m in container["volumeMounts"] if m["name"] in by_name}
        assert mounted == claims and p["securityContext"]["fsGroup"] == 1000
    # the cpu profile names no checkpoint claim: an emptyDir there, in both manifests
    cpu_tj, _, cpu_job = adapters.w21_render(CPU, tmp_path / "cpu").objects
    cpu_patched = cpu_tj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    for p in (cpu_job["spec"]["template"]["spec"], cpu_patched["template"]["spec"]["template"]["spec"]):
        assert p["volumes"][0] == {"name": "artifacts", "emptyDir": {}}
    assert (tmp_path / "multinode" / "hostfile").read_text() == "node0 slots=2\nnode1 slots=2\n"
    sh = (tmp_path / "multinode" / "launch.sh").read_text()
    assert "--no_ssh --node_rank 0" in sh and "--no_ssh --node_rank 1" in sh and "--launcher pdsh" in sh


def test_a_pod_builds_its_job_from_the_multinode_profile(tmp_path, monkeypatch):
    """What each pod runs (`python -m impl.w21_infra.worker --run-dir D --profile multinode`) up to the training:
    the job comes from the profile, resumes from a checkpoint when one exists; without either it stops clearly."""
    from impl.w21_infra import worker
    from impl.w21_infra.spec import GPTSpec

    job = worker.job_from_profile("multinode", tmp_path)
    gpt = GPTSpec.model_validate(job["gpt"])
    assert job["resume"] and job["checkpoint_every"] == 500
    assert gpt.train.precision == "bf16" and gpt.model.n_embd == 768 and gpt.data.hub_path == "Skylion007/openwebtext"
    monkeypatch.setattr(sys, "argv", ["worker", "--run-dir", str(tmp_path / "empty")])
    with pytest.raises(SystemExit, match="no --profile was given"):
        worker.main()


def test_a_relaunch_resumes_only_a_complete_checkpoint_and_stops_when_there_is_none(tmp_path):
    """The fault check's relaunch never quietly starts at step 0 (it would repeat the uninterrupted run), nor from
    a checkpoint a host died saving: DeepSpeed's rank 0 writes `latest` before the other ranks' partitions are
    saved, so only `complete` (written after the barrier) counts."""
    from impl.w21_infra import worker

    job = {"gpt": tiny().gpt.model_dump(), "resume": True, "require_checkpoint": True}
    ckpt = tmp_path / "checkpoints"
    (ckpt / "step2").mkdir(parents=True)  # killed mid-save: rank 0's part and `latest`, no `complete`
    (ckpt / "latest").write_text("step2")
    with pytest.raises(SystemExit, match="must resume from a checkpoint.*checkpoints/complete"):
        worker.train_process(job, tmp_path)
    (ckpt / "step1").mkdir()
    (ckpt / "complete").write_text("step1")
    assert worker.complete_checkpoint(ckpt) == ("step1", 1)


def test_the_kill_point_is_seeded_and_lies_between_the_first_checkpoint_and_the_last_step():
    points = {seed: multihost.kill_point(override(CPU, fault={"seed": seed})) for seed in range(20)}
    assert points[0] == multihost.kill_point(CPU)  # the same seed, the same point
    assert all(4 <= step <= 14 and 0 <= fraction < 1 for step, fraction in points.values())
    assert len({step for step, _ in points.values()}) > 5


# --- errors -------------------------------------------------------------------------------------------------------
@needs_netns
def test_a_port_in_use_on_the_master_is_one_clear_error_before_launching(runs):
    spec = tiny()
    with netns.two_hosts() as hosts:
        port = multihost.free_port_in(hosts[0])
        listener = subprocess.Popen(hosts[0].wrap([sys.executable, "-c", (
            "import socket,time\ns=socket.socket()\ns.bind(('10.77.0.1', %d))\ns.listen()\nprint('up', flush=True)\n"
            "time.sleep(60)") % port]), stdout=subprocess.PIPE, text=True)
        try:
            assert listener.stdout.readline().strip() == "up"
            with pytest.raises(multihost.PortInUse, match=f"port {port} is already in use on host 0"):
                multihost.two_host(spec, runs, master_port=port, hosts=hosts)
        finally:
            listener.kill()
            listener.wait()
        names = [h.netns for h in hosts]
        assert not list(runs.root.rglob("host0.log"))  # nothing was launched
    assert not any(netns.exists(n) for n in names)


@needs_netns
def test_namespaces_and_their_processes_are_removed_when_the_body_raises():
    with pytest.raises(RuntimeError, match="boom"):
        with netns.two_hosts() as hosts:
            sleeper = subprocess.Popen(hosts[1].wrap(["sleep", "60"]))
            names = [h.netns for h in hosts]
            assert all(netns.exists(n) for n in names)
            assert all(len(h.ifname) <= 15 for h in hosts) and not set(names) & set(netns.stale())  # ours: alive
            raise RuntimeError("boom")
    assert sleeper.wait(timeout=10) is not None  # killed with its host
    assert not any(netns.exists(n) for n in names)
    assert not any((netns.OWNERS / n).exists() for n in names)  # the owner records go with the namespaces
    assert subprocess.run(["ip", "link", "show", hosts[0].ifname], capture_output=True).returncode != 0


def test_a_fault_schedule_without_a_checkpoint_before_the_kill_is_rejected(tmp_path):
    with pytest.raises(ValidationError, match="checkpoint_every"):
        tiny(fault={"checkpoint_every": 3})  # 4 steps: no step left to die in after the first checkpoint
    with pytest.raises(ValidationError, match="at least twice the fault_detect_seconds target"):
        tiny(fault={"detect_timeout_s": CPU.targets["fault_detect_seconds"].threshold})
    with pytest.raises(ValidationError, match="multiple of hosts"):
        override(CPU, gpt={"train": {"batch_size": 15}})
    bad = tmp_path / "bad.yaml"
    bad.write_text((load_profile("cpu").path.read_text()).replace("zero_stage: 2, log_every: 1}",
                                                                   "zero_stage: 3, log_every: 1}"))
    with pytest.raises(ProfileError, match="w21's run is ZeRO-2"):
        load_profile(bad)


def test_the_deploy_cli_renders_and_reports_validation(tmp_path, capsys):
    from impl.__main__ import main

    assert main(["deploy", "render", "--profile", "cpu", "--out", str(tmp_path / "out")]) == 0
    assert "3 objects" in capsys.readouterr().out and (tmp_path / "out" / "trainjob.yaml").exists()
    assert main(["deploy", "render", "--profile", "cpu", "--out", str(tmp_path / "out")]) == 0  # replaced whole
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["hostfile", "indexed-job.yaml", "launch.sh",
                                                                    "trainjob.yaml"]
    assert main(["deploy", "run", "--profile", "no-such-profile"]) == 2  # one line, no traceback
    assert "error:" in capsys.readouterr().err


def test_runs_found_complete_under_reuse_artifacts_say_so_and_fresh_ones_do_not(tmp_path, monkeypatch):
    """--reuse-artifacts: the rows of a reused two-host run carry reused_artifact (the reading, not a relaunch)."""
    spec = tiny()
    made = tmp_path / "run"
    made.mkdir()
    (made / "metrics.json").write_text('{"train_tokens_per_s": 100.0, "data": "d", "backend": "gloo", "params": 10}')
    (made / "train_log.jsonl").write_text('{"step": 0, "loss": 5.0}\n')
    monkeypatch.setattr(Runs, "dir_for", lambda self, config, name="": made)
    p = multihost.parity(spec, Runs("w21", "test", reuse=True, root=tmp_path))
    assert p["single_host"]["reused"] and p["two_host"]["reused"]
    assert multihost._read(made)["reused"] is False  # what a run just made reports
