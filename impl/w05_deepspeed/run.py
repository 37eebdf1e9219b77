"""Launch w05's runs under torchrun and compare them.

    from impl.core.artifacts import Runs
    from impl.w05_deepspeed.run import train, compare, stage_table_markdown
    runs = Runs("w05", "cpu")
    result = train(spec, runs)          # the profile's ZeRO run (train.zero_stage) and its validation ppl
    c = compare(spec, runs)             # DDP and ZeRO stages 0-3 for compare.steps steps, same global batch
    print(stage_table_markdown(c, gpu_hour_usd=2.5))

Every run is `torchrun --nproc_per_node=N -m impl.w05_deepspeed.train --run-dir D`, with a time-out; a failed or
hung rank raises DistributedError carrying the ranks' output.
"""
from __future__ import annotations

import json
from pathlib import Path

from impl.core.artifacts import RunResult, Runs, write_json
from impl.core.distributed import torchrun
from impl.core.profiles import override
from impl.w01_gpt.data import prepare
from impl.w05_deepspeed.spec import W05Spec


def _launch(spec: W05Spec, run_dir: Path, engine: str, evaluate: bool, same_shard: bool,
            timeout_s: float) -> RunResult:
    out = run_dir / "metrics.json"
    if out.exists():
        return RunResult(run_dir, json.loads(out.read_text()), reused=True)
    write_json(run_dir / "job.json", {"spec": spec.model_dump(), "engine": engine, "evaluate": evaluate,
                                      "same_shard": same_shard})
    prepare(spec.data, spec.tokenizer)  # build the token cache once, before the ranks need it
    torchrun("impl.w05_deepspeed.train", ["--run-dir", str(run_dir)], spec.train.nproc, timeout_s,
             run_dir / "torchrun.log", expect=out)
    return RunResult(run_dir, json.loads(out.read_text()))


def train(spec: W05Spec, runs: Runs, gpu_hour_usd: float | None = None, timeout_s: float = 6 * 3600) -> RunResult:
    """The profile's training run through DeepSpeed (ZeRO `train.zero_stage`), evaluated on validation; with
    the profile's $/GPU-hour, metrics["cost_usd"] estimates what it cost (process-hours x price)."""
    config = {**spec.model_dump(exclude={"targets", "compare"}), "engine": "deepspeed"}
    result = _launch(spec, runs.dir_for(config, name="train"), "deepspeed", True, False, timeout_s)
    result.metrics["cost_usd"] = cost_usd(result.metrics["device_hours"], gpu_hour_usd)
    return result


def compare_spec(spec: W05Spec, zero_stage: int) -> W05Spec:
    """The comparison runs: `compare.steps` steps on `compare.nproc` processes, dropout off (its masks differ
    per rank), fp32 (the comparison is of the algorithm, not of rounding), a loss logged every step."""
    c = spec.compare
    return override(spec, model={"dropout": 0.0},
                    train={"steps": c.steps, "nproc": c.nproc, "zero_stage": zero_stage, "precision": "fp32",
                           "log_every": 1, "warmup_steps": min(spec.train.warmup_steps, c.steps)})


def compare(spec: W05Spec, runs: Runs, same_shard: bool = False, unpartitioned: bool = False,
            timeout_s: float = 1800) -> dict:
    """Plain DDP and DeepSpeed ZeRO at each of `compare.stages`, same seed, batches and global batch. The sabotage
    twins: `same_shard` makes the ZeRO-2 run's ranks all train on rank 0's slice of the batch; `unpartitioned`
    runs ZeRO stage 0 where the comparison says ZeRO-2 (its numbers reported as ZeRO-2's)."""
    results = {}
    for engine, stage in [("ddp", 0)] + [("deepspeed", s) for s in spec.compare.stages]:
        swapped = unpartitioned and engine == "deepspeed" and stage == 2
        s = compare_spec(spec, 0 if swapped else stage)
        sabotaged = same_shard and engine == "deepspeed" and stage == 2
        config = {**s.model_dump(exclude={"targets", "compare"}), "engine": engine, "same_shard": sabotaged,
                  **({"reported_as_stage": 2} if swapped else {})}
        name = "ddp" if engine == "ddp" else f"zero{stage}"
        r = _launch(s, runs.dir_for(config, name=f"compare/{name}"), engine, False, sabotaged, timeout_s)
        results[name] = {**r.metrics, "curve": [(x["step"], x["loss"]) for x in r.train_log()],
                         "run_dir": str(r.run_dir)}
    ddp, zero2 = results["ddp"], results["zero2"]
    for r in results.values():
        r["max_loss_diff_vs_ddp"] = max(abs(a - b) for (_, a), (_, b) in zip(ddp["curve"], r["curve"], strict=True))
    return {
        "runs": results,
        "zero2_ddp_max_loss_diff": zero2["max_loss_diff_vs_ddp"],
        "optimizer_state_ratio": max(zero2["optimizer_state_bytes_per_rank"]) /
                                 max(ddp["optimizer_state_bytes_per_rank"]),
        "nproc": spec.compare.nproc, "steps": spec.compare.steps, "same_shard": same_shard,
        "unpartitioned": unpartitioned,
    }


def cost_usd(device_hours: float, gpu_hour_usd: float | None) -> float | None:
    return None if gpu_hour_usd is None else device_hours * gpu_hour_usd


def _mib(values: list[float]) -> str:
    return " / ".join(f"{v / 2**20:.3g}" for v in values)


def stage_table_markdown(c: dict, gpu_hour_usd: float | None = None) -> str:
    """The ZeRO stage table of a `compare` result: what each rank holds, throughput, and the loss reached."""
    runs = c["runs"]
    any_run = next(iter(runs.values()))
    lines = [f"# w05: DeepSpeed ZeRO stages on {c['nproc']} x {any_run['device']} ({any_run['backend']}), "
             f"{any_run['params']:,}-parameter GPT, {c['steps']} steps of {any_run['tokens_per_step']:,} tokens, "
             f"{any_run['precision']}", "",
             "Bytes counted tensor by tensor on each rank (rank 0 / rank 1 ...), in MiB. Peak memory: "
             + ("peak bytes allocated by torch." if any_run["device"] == "cuda" else
                "peak RSS, torch's own libraries included."), "",
             "| run | parameters | fp32 master copy | optimizer state (Adam moments) | peak memory "
             "| tokens/s | loss at last step | max loss diff vs DDP |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        label = "DDP (torch)" if name == "ddp" else f"ZeRO-{r['zero_stage']}" + (
            " (sabotaged: ranks share one shard)" if c["same_shard"] and r["zero_stage"] == 2 else "")
        lines.append(f"| {label} | {_mib(r['param_bytes_per_rank'])} | {_mib(r['master_param_bytes_per_rank'])} "
                     f"| {_mib(r['optimizer_state_bytes_per_rank'])} "
                     f"| {' / '.join(f'{v:.0f}' for v in r['peak_memory_mb_per_rank'])} "
                     f"| {r['train_tokens_per_s']:.0f} | {r['curve'][-1][1]:.4f} | {r['max_loss_diff_vs_ddp']:.2e} |")
    ddp_state, zero2_state = runs["ddp"]["optimizer_state_bytes_per_rank"], runs["zero2"]["optimizer_state_bytes_per_rank"]
    lines += ["", f"ZeRO-2 holds {c['optimizer_state_ratio']:.3f} of DDP's optimizer state per rank (ideal "
              f"1/{c['nproc']} = {1 / c['nproc']:.3f}); over all ranks {sum(zero2_state) / max(ddp_state):.3f} of one "
              f"full copy (above 1: padding of the flat partitions). ZeRO 1-2 keep an fp32 master partition beside the "
              f"parameters even in fp32 training; ZeRO-3 also partitions the parameters themselves."]
    if gpu_hour_usd is not None:
        lines += ["", "| run | device-hours | cost at $%.2f / GPU-hour |" % gpu_hour_usd, "|---|---|---|"]
        for name, r in runs.items():
            lines.append(f"| {name} | {r['device_hours']:.4f} | ${cost_usd(r['device_hours'], gpu_hour_usd):.4f} |")
    return "\n".join(lines) + "\n"
