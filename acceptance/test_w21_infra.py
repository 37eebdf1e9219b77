"""w21 — package the training environment in Docker and train a small GPT with DeepSpeed across 2+ machines
(Kubernetes or SSH); measure throughput and multi-node scaling efficiency; automate the deployment.

    pytest acceptance -m "w21 and cpu"         # the CPU image + container parity; two namespaces as two hosts;
                                               # the cpu profile's manifests
    pytest acceptance -m "w21 and multinode"   # one row only: the manifests for 2 nodes x 2 GPUs (NCCL) render
                                               # and validate offline; nothing is built or trained on the nodes

The two-host run: two network namespaces joined by a veth pair act as two hosts; each runs its own launcher
(`deepspeed --no_ssh --node_rank 0|1`, the SSH-cluster command of launch.sh) with one gloo process, DeepSpeed
ZeRO-2 on w05's GPT. It must follow the single-host
run of the same global batch step by step; the scorecard records tokens/s for 1 and 2 hosts and the scaling
efficiency. Faults: host 1 is killed during a training step (a seeded step, a seeded point within it); the time
host 0's launcher takes to exit with the error is a row of its own (inf when it is still running
fault.detect_timeout_s later), and the job resumed from the last complete checkpoint on disk must end where the
uninterrupted run ends (a relaunch that did not start at that checkpoint's step records inf). Every rendered
manifest (Kubeflow Trainer TrainJob, Indexed Job + headless Service) validates offline.
"""
import pytest

from impl import adapters

_two_host: dict[str, dict] = {}
_faults: dict[str, dict] = {}


def _parity(spec, runs) -> dict:
    """The single-host reference and the two-host run, once per spec in this process (read by two checks)."""
    from impl.w21_infra.netns import why_unavailable

    why = why_unavailable()
    if why:  # the two "hosts" are network namespaces: root and iproute2
        pytest.skip(f"two hosts from network namespaces are impossible here: {why}")
    key = spec.model_dump_json()
    if key not in _two_host:
        _two_host[key] = adapters.w21_two_host_parity(spec, runs)
    return _two_host[key]


def _fault(spec, runs) -> dict:
    """The fault run, once per spec in this process (read by the detection and the resume checks)."""
    p = _parity(spec, runs)
    key = spec.model_dump_json()
    if key not in _faults:
        _faults[key] = adapters.w21_fault_and_resume(spec, runs, uninterrupted=p["two_host"])
    return _faults[key]


def _kill(f: dict) -> dict:
    """Where host 1 died, for both rows."""
    return {k: f[k] for k in ("kill_step", "kill_fraction", "kill_delay_s", "killed_during_step",
                              "incomplete_checkpoint", "host_1")}


# ---- w21-cluster's checks -------------------------------------------------------------------------------------
@pytest.mark.check("w21", target="two_host_max_loss_diff")
def test_two_hosts_each_launching_its_node_rank_follow_the_single_host_run_and_scaling_is_recorded(
        spec, runs, scorecard):
    p = _parity(spec, runs)
    one, two = p["single_host"], p["two_host"]
    scorecard.check(
        p["max_loss_diff"], data=two["data"], curve=two["curve"], single_host_curve=one["curve"],
        hosts=p["hosts"], processes_per_host=p["nproc_per_host"], launcher=p["launcher"], backend=two["backend"],
        network=p["network"], global_batch_tokens=two["tokens_per_step"], steps=p["steps"],
        tokens_per_s_1_host=one["train_tokens_per_s"], tokens_per_s_2_hosts=two["train_tokens_per_s"],
        scaling_efficiency=p["scaling_efficiency"], scaling_note=p["scaling_note"],
        launch_commands=p["commands"], reused_artifact=one["reused"] or two["reused"],
        artifacts=[one["run_dir"], two["run_dir"]],
    )


@pytest.mark.check("w21", target="resume_final_loss_diff")
def test_a_job_whose_host_1_was_killed_mid_step_resumes_from_the_last_complete_checkpoint_and_ends_unchanged(
        spec, runs, scorecard):
    p = _parity(spec, runs)
    f = _fault(spec, runs)
    # a relaunch that did not start at the last complete checkpoint found on disk after the kill resumed nothing
    # (or the wrong thing): its value is inf (a failing row, whatever its final loss), so a run that merely
    # repeated the uninterrupted one cannot pass
    expected = f["expected_resume_step"]
    resumed = bool(expected) and f["resumed_from_step"] == expected
    resume_error = None if resumed else (f"the relaunch started at step {f['resumed_from_step']}, not at the last "
                                         f"complete checkpoint's step {expected}: nothing was resumed")
    scorecard.check(
        f["final_loss_diff"] if resumed else float("inf"), data=p["two_host"]["data"], curve=f["resumed_curve"],
        uninterrupted_curve=p["two_host"]["curve"], **_kill(f), resume_tag=f["resume_tag"],
        resumed_from_step=f["resumed_from_step"], expected_resume_step=expected, resume_error=resume_error,
        final_loss_diff=f["final_loss_diff"], max_loss_diff_after_resume=f["max_loss_diff_after_resume"],
        hosts=f["hosts"], detect_seconds=f["detect_seconds"], reused_artifact=f["reused"], artifacts=f["run_dir"],
    )


@pytest.mark.check("w21", target="fault_detect_seconds")
def test_a_host_killed_mid_step_is_reported_by_the_other_hosts_launcher_in_time(spec, runs, scorecard):
    p = _parity(spec, runs)
    f = _fault(spec, runs)
    scorecard.check(
        f["detect_seconds"], data=p["two_host"]["data"], **_kill(f), launcher=spec.hosts.launcher,
        launcher_error=f["launcher_error"], detect_timeout_s=f["detect_timeout_s"], reused_artifact=f["reused"],
        artifacts=f["run_dir"], note=f"seconds from SIGKILL of every process of host 1 to host 0's launcher exiting with the error; inf: "
             f"still running {f['detect_timeout_s']:g} s after the kill (never noticed)",
    )


@pytest.mark.check("w21", target="manifests_invalid")
def test_every_rendered_manifest_validates_offline(spec, runs, scorecard, profile):
    out = runs.dir_for({"manifests": spec.cluster.model_dump(), "profile": profile.name}, name="manifests")
    rendered = adapters.w21_render(spec, out / "rendered")
    report = adapters.w21_validate(spec, rendered)
    scorecard.check(
        len(report["invalid"]), data=f"{len(report['checked'])} manifests rendered from the {profile.name} profile",
        checked=report["checked"], invalid=report["invalid"], kubernetes_version=report["kubernetes_version"],
        crd=report["crd"], files=sorted(str(p) for p in rendered.files.values()),
    )
    assert report["checked"], "nothing was validated"
# ---- end of w21-cluster's checks -------------------------------------------------------------------------------


# ---- w21-container's check --------------------------------------------------------------------------------------
@pytest.mark.registry  # the base image from a Debian mirror and the image's wheels, once (then cached)
@pytest.mark.check("w21", target="container_loss_diff")
def test_the_cpu_image_builds_here_and_w01_inside_it_reproduces_the_host_run(spec, runs, scorecard):
    from impl.w21_infra.daemon import why_unavailable

    why = why_unavailable()
    if why:
        pytest.skip(f"Docker cannot run here: {why}")
    r = adapters.w21_container_parity(spec, runs)
    m = r.metrics
    host, ctr, build = m["host"], m["container"], m["build"]
    steps = sorted(host["curve"], key=int)
    scorecard.check(
        m["container_loss_diff"], data=m["data"], curve=[[int(s), ctr["curve"][s]] for s in steps],
        host_curve=[[int(s), host["curve"][s]] for s in steps],
        curve_max_diff=m["curve_max_diff"], val_loss_diff=m["val_loss_diff"], host_val_loss=host["val_loss"],
        container_val_loss=ctr["val_loss"], host_tokens_per_s=host["train_tokens_per_s"],
        container_tokens_per_s=ctr["train_tokens_per_s"], tokens_per_s_note=m["tokens_per_s_note"],
        params=host["params"], image=build["image"], artifacts=str(r.run_dir), reused_artifact=r.reused,
        base_image=build["base_image"], base_reused=build.get("base_reused"), base_built_s=build.get("base_built_s"),
        build_s=build["build_s"], build_steps=build["build_steps"], steps_cached=build["steps_cached"],
        image_size_mb=build["image_size_mb"], image_contents=m["image_contents"], daemon=build.get("daemon"),
        container_command="python -m impl train w01 --profile <container.w01> (fixture cache read-only, no network)",
    )
# ---- end of w21-container's check -------------------------------------------------------------------------------
