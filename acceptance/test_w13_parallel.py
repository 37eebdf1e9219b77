"""w13 — understand tensor and pipeline parallelism: with 2+ GPUs train a small GPT (125M) with 2-way tensor
parallelism or a 2-stage pipeline, record tokens/s and memory, compare with one GPU and analyse the parallel
efficiency against Megatron-LM's theory.

    pytest acceptance -m "w13 and cpu"    # a small GPT on 2 gloo processes against the same GPT in one process
    pytest acceptance -m "w13 and gpu2"   # a 125M GPT on 2 GPUs (NCCL)

Each check: forward, loss and gradients of the parallel model match the single-process model (the target is the
largest gradient difference), then tokens/s and per-rank memory against the single-process run, and the
generated efficiency analysis (communication volume for TP, bubble fraction for PP) in the scorecard.
"""
import pytest

from impl import adapters


def _record(scorecard, r, analysis):
    scorecard.check(
        r["max_grad_diff"],
        data=f"random token batches of {r['single']['params']:,}-parameter GPT, same seed and batches in both layouts",
        curve=r["curve_parallel"],
        max_logit_diff=r["max_logit_diff"], loss_diff=r["loss_diff"], max_grad_rel_diff=r["max_grad_rel_diff"],
        max_param_diff_after_steps=r["max_param_diff"], processes=r["nproc"], backend=r["backend"],
        tokens_per_s_single=r["tokens_per_s_single"], tokens_per_s_parallel=r["tokens_per_s"],
        speedup=r["speedup"], scaling_efficiency=r["scaling_efficiency"],
        peak_memory_mb_per_rank=r["peak_memory_mb_per_rank"], peak_memory_mb_single=r["single"]["peak_memory_mb"],
        param_state_mb_per_rank=r["param_state_mb_per_rank"], param_state_mb_single=r["single"]["param_state_mb"],
        analysis=analysis,
    )


@pytest.mark.check("w13", target="tp_max_grad_diff")
def test_tensor_parallel_gpt_matches_one_process_and_its_efficiency_is_analysed(spec, runs, scorecard):
    r = adapters.w13_parallel(spec, runs, "tp")
    _record(scorecard, r, adapters.w13_analysis(r, None))


@pytest.mark.check("w13", target="pp_max_grad_diff")
def test_pipeline_parallel_gpt_matches_one_process_and_its_bubble_is_analysed(spec, runs, scorecard):
    r = adapters.w13_parallel(spec, runs, "pp")
    _record(scorecard, r, adapters.w13_analysis(None, r))
