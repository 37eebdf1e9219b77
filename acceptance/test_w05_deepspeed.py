"""w05 — train GPT-2 (124M) with DeepSpeed on an OpenWebText subset, ZeRO stage 2 and mixed precision, on
several GPUs if present, otherwise one; validation perplexity < 30; record training speed, GPU memory and cost.

    pytest acceptance -m "w05 and cpu"    # the w01 GPT on Austen+Brown, ZeRO-2 on 2 gloo processes
    pytest acceptance -m "w05 and gpu1"   # GPT-2 124M on an OpenWebText subset, ZeRO-2 + bf16, one GPU
    pytest acceptance -m "w05 and gpu2"   # the same on 2 GPUs, plus the comparison with DDP

The comparison checks (cpu, gpu2) run plain DDP and ZeRO stages 0-3 for a few steps on the same seed and global
batch: ZeRO-2's loss curve must match DDP's, each ZeRO-2 rank must hold about half of DDP's optimizer state,
and the stage table (bytes per rank, tokens/s) goes into the scorecard.
"""
import pytest

from impl import adapters

_comparisons: dict[str, dict] = {}


def _comparison(spec, runs) -> dict:
    """DDP and ZeRO 0-3, run once per spec in this process and read by both comparison checks."""
    key = spec.model_dump_json()
    if key not in _comparisons:
        _comparisons[key] = adapters.w05_compare(spec, runs)
    return _comparisons[key]


@pytest.mark.check("w05", target="val_ppl")
def test_zero2_training_reaches_the_perplexity_and_records_speed_memory_and_cost(spec, runs, scorecard, profile):
    for seeded in scorecard.each_seed(spec):
        r = adapters.w05_train(seeded, runs, gpu_hour_usd=profile.gpu_hour_usd)
        m = r.metrics
        scorecard.check(
            m["val_ppl"], data=m["data"], curve=[(x["step"], x["loss"]) for x in r.train_log()],
            trivial={"unigram": m["unigram_val_ppl"]}, zero_stage=m["zero_stage"], processes=m["world_size"],
            backend=m["backend"], precision=m["precision"], grad_accum=seeded.train.grad_accum,
            global_batch_tokens=m["tokens_per_step"], train_tokens_per_s=m["train_tokens_per_s"],
            peak_memory_mb_per_rank=m["peak_memory_mb_per_rank"], train_seconds=m["train_seconds"],
            device_hours=m["device_hours"], gpu_hour_usd=profile.gpu_hour_usd,
            cost_usd=m["cost_usd"] if m["cost_usd"] is not None else "no gpu_hour_usd in this profile",
            deepspeed_config=str(r.run_dir / "ds_config.json"), sample=m["sample"],
        )


@pytest.mark.check("w05", target="zero2_ddp_max_loss_diff")
def test_zero2_loss_curve_matches_plain_ddp_with_the_same_seed_and_global_batch(spec, runs, scorecard):
    c = _comparison(spec, runs)
    zero2, ddp = c["runs"]["zero2"], c["runs"]["ddp"]
    scorecard.check(
        c["zero2_ddp_max_loss_diff"], data=zero2["data"], curve=zero2["curve"], ddp_curve=ddp["curve"],
        processes=c["nproc"], steps=c["steps"], backend=zero2["backend"],
        global_batch_tokens=zero2["tokens_per_step"], grad_accum=spec.train.grad_accum,
    )


@pytest.mark.check("w05", target="optimizer_state_ratio")
def test_each_zero2_rank_holds_half_the_optimizer_state_of_ddp_and_the_stage_table_is_reported(
        spec, runs, scorecard, profile):
    c = _comparison(spec, runs)
    zero2, ddp = (c["runs"][k]["optimizer_state_bytes_per_rank"] for k in ("zero2", "ddp"))
    scorecard.check(
        c["optimizer_state_ratio"], data=c["runs"]["zero2"]["data"],
        optimizer_state_bytes_per_rank_zero2=zero2, optimizer_state_bytes_per_rank_ddp=ddp, processes=c["nproc"],
        stage_table=adapters.w05_stage_table(c, profile.gpu_hour_usd),
    )
    # partitioned, not lost: together the ranks still hold (at least) one whole copy
    assert sum(zero2) >= max(ddp), f"ZeRO-2 ranks hold {zero2} bytes of optimizer state in all, DDP {max(ddp)}"
