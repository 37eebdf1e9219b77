"""Launch the w13 runs under torchrun and turn their numbers into the efficiency analysis.

    from impl.core.artifacts import Runs
    from impl.w13_parallel.run import run, analysis_markdown
    runs = Runs("w13", "cpu")
    tp, pp = run(spec, runs, "tp"), run(spec, runs, "pp")
    print(analysis_markdown(tp, pp))

Each kind is two launches: the parallel run (`parity.nproc` ranks: parity, then its own speed and memory) and
the single-process baseline (1 rank, the reference model timed the same way; the same for both kinds, so
`Runs(reuse=True)` measures it once). torchrun gives the 1-rank run all the cores' threads and each of the p
ranks 1/p of them, so both use the whole machine.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from impl.core.artifacts import Runs, write_json
from impl.core.distributed import torchrun
from impl.w13_parallel.spec import W13Spec

MODULES = {"tp": "impl.w13_parallel.tp", "pp": "impl.w13_parallel.pp"}
PIPELINE_ONLY = ("nproc", "micro_batches", "schedule")  # parity fields that do not change the 1-process run


def _launch(module: str, spec: W13Spec, run_dir: Path, nproc: int, timeout_s: float,
            sabotage: bool = False, inject_fault: str | None = None) -> dict:
    out = run_dir / "metrics.json"  # the name Runs looks for when reusing a complete run
    if out.exists():
        return json.loads(out.read_text())
    write_json(run_dir / "spec.json", spec.model_dump())
    args = ["--spec-json", str(run_dir / "spec.json"), "--out", str(out)]
    args += ["--sabotage"] if sabotage else []
    args += ["--inject-fault", inject_fault] if inject_fault else []
    log = run_dir / "torchrun.log"
    torchrun(module, args, nproc, timeout_s, log, expect=out)  # raises with the ranks' output on failure
    return json.loads(out.read_text())


def run(spec: W13Spec, runs: Runs, kind: Literal["tp", "pp"], sabotage: bool = False,
        timeout_s: float = 1800, inject_fault: Literal["raise", "hang"] | None = None) -> dict:
    """The parallel run's result (parity, speed, memory, communication) plus the 1-process baseline and the
    speedup and efficiency against it. `sabotage`: tp drops the row-parallel all-reduces, pp the tied-embedding
    gradient sum. `inject_fault` (tests): the last rank raises or hangs."""
    if kind not in MODULES:
        raise ValueError(f"kind must be one of {sorted(MODULES)}; got {kind!r}")
    base = spec.model_dump(exclude={"targets"})
    config = {**base, "kind": kind, "sabotage": sabotage, "inject_fault": inject_fault}
    parallel_dir = runs.dir_for(config, name=kind)
    # the parallel run first: a broken launch fails before the baseline is spent
    parallel = _launch(MODULES[kind], spec, parallel_dir, spec.parity.nproc, timeout_s, sabotage, inject_fault)
    single_config = {"model": base["model"],
                     "parity": {k: v for k, v in base["parity"].items() if k not in PIPELINE_ONLY}}
    single_dir = runs.dir_for(single_config, name="single")
    single = _launch(MODULES[kind], spec, single_dir, 1, timeout_s)
    speedup = parallel["tokens_per_s"] / single["tokens_per_s"]
    return {**parallel, "single": single, "tokens_per_s_single": single["tokens_per_s"], "speedup": speedup,
            "scaling_efficiency": speedup / parallel["nproc"],
            "run_dirs": {kind: str(parallel_dir), "single": str(single_dir)}}


# --- the analysis -----------------------------------------------------------------------------------------
def _mb(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.3g} MiB"


def _ranks(values: list[float], fmt: str = "{:.0f}") -> str:
    return " / ".join(fmt.format(v) for v in values)


def analysis_markdown(tp: dict | None, pp: dict | None) -> str:
    """A Markdown report computed from the numbers of `run(..., "tp")` and `run(..., "pp")` (either may be None)."""
    results = [r for r in (tp, pp) if r]
    if not results:
        return "# w13: tensor and pipeline parallelism\n\nNo results.\n"
    any_r = results[0]
    single = any_r["single"]
    lines = [f"# w13: tensor and pipeline parallelism on {any_r['nproc']} x {any_r['device']} "
             f"({any_r['backend']})", ""]

    lines += ["## Parity with one process", "",
              "| layout | max logit diff | loss diff | max grad diff | grad diff / max grad "
              "| max param diff after steps | max loss-curve diff |",
              "|---|---|---|---|---|---|---|"]
    for r in results:
        tag = r["kind"].upper() + (" (sabotaged: " + r["sabotage_means"] + ")" if r["sabotage"] else "")
        lines.append(f"| {tag} | {r['max_logit_diff']:.2e} | {r['loss_diff']:.2e} | {r['max_grad_diff']:.2e} "
                     f"| {r['max_grad_rel_diff']:.2e} | {r['max_param_diff']:.2e} ({r['steps']} steps) "
                     f"| {r['max_loss_diff']:.2e} |")

    lines += ["", "## Throughput and memory", "",
              "| layout | tokens/s | speedup | efficiency = speedup / p | peak memory per rank (MiB) "
              "| params + grads + optimizer state per rank (MiB) |",
              "|---|---|---|---|---|---|",
              f"| 1 process ({single['threads']} threads) | {single['tokens_per_s']:.0f} | 1.00 | 1.00 "
              f"| {single['peak_memory_mb']:.0f} | {single['param_state_mb']:.3g} |"]
    for r in results:
        lines.append(f"| {r['kind'].upper()} x {r['nproc']} ({r['threads_per_rank']} thread(s) each) "
                     f"| {r['tokens_per_s']:.0f} | {r['speedup']:.2f} | {r['scaling_efficiency']:.2f} "
                     f"| {_ranks(r['peak_memory_mb_per_rank'])} | {_ranks(r['param_state_mb_per_rank'], '{:.3g}')} |")
    for r in results:
        share = max(r["param_state_mb_per_rank"]) / single["param_state_mb"]
        lines.append(f"\n{r['kind'].upper()}: the largest rank holds {share:.0%} of the 1-process model state "
                     f"(ideal {1 / r['nproc']:.0%}; replicated parts "
                     f"{'embeddings, LayerNorms and biases' if r['kind'] == 'tp' else 'the tied embedding copy'} "
                     f"make up the rest).")

    lines += ["", "## Communication per training step", ""]
    if tp:
        c = tp["comm"]
        per_s = c["ring_bytes_sent_per_rank_per_step"] / tp["seconds_per_step"]
        counted = c.get("bytes_per_step_counted")
        lines.append(f"- TP: {c['all_reduces_per_step']} blocking all-reduces (2 forward + 2 backward per layer) "
                     f"of batch x seq x n_embd: {_mb(c['bytes_per_step'])} of payload"
                     + (f" (counted in the run: {_mb(counted)})" if counted is not None else "")
                     + f"; a ring all-reduce sends {_mb(c['ring_bytes_sent_per_rank_per_step'])} from each rank, "
                     f"{per_s / 2**20:.3g} MiB/s at the measured {tp['seconds_per_step'] * 1e3:.1f} ms per step.")
    if pp:
        c = pp["comm"]
        total = c["p2p_bytes_per_step"] + c["tied_embedding_allreduce_bytes_per_step"]
        lines.append(f"- PP: {_mb(c['p2p_bytes_per_step'])} of activations and their gradients across "
                     f"{pp['nproc'] - 1} stage boundary(ies), plus {_mb(c['tied_embedding_allreduce_bytes_per_step'])} "
                     f"for the tied embedding's gradient: {_mb(total)} per step.")
        if tp:
            lines.append(f"- TP moves {tp['comm']['bytes_per_step'] / total:.1f}x the bytes of PP per step, and on "
                         f"the critical path of every layer; PP's transfers overlap other micro-batches' compute.")

    if pp:
        b = pp["bubble"]
        measured = sum(b["measured_per_rank"]) / len(b["measured_per_rank"])
        lines += ["", "## Pipeline bubble", "",
                  f"{pp['schedule']} schedule, p = {pp['nproc']} stages (blocks {pp['stage_blocks']}), "
                  f"m = {pp['micro_batches']} micro-batches.", "",
                  "| | idle fraction |", "|---|---|",
                  f"| theory (p - 1) / (m + p - 1) | {b['theory']:.3f} |",
                  f"| measured, per rank: 1 - m x t(micro-batch alone) / t(pipeline step) "
                  f"| {_ranks(b['measured_per_rank'], '{:.3f}')} (mean {measured:.3f}) |", "",
                  f"Micro-batch forward+backward alone: {_ranks([s * 1e3 for s in b['microbatch_seconds_per_rank']], '{:.2f}')} ms "
                  f"per stage (slowest / fastest {max(b['microbatch_seconds_per_rank']) / min(b['microbatch_seconds_per_rank']):.2f}); "
                  f"pipeline step {b['pipeline_seconds_per_step'] * 1e3:.2f} ms. The measured idle "
                  f"fraction is {measured - b['theory']:+.3f} from theory: transfers, schedule overhead and the "
                  f"imbalance between stages are not in the formula."]
    return "\n".join(lines) + "\n"
