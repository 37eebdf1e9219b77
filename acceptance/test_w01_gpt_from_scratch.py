"""w01 — implement a decoder-only Transformer language model from scratch (nanoGPT-like), train it on
WikiText-2 to a validation perplexity below 55, and use PyTorch DDP for multi-GPU training when there is
hardware.

    pytest acceptance -m "w01 and cpu"      # Austen + Brown, calibrated target, ~3 minutes on 2 cores
    pytest acceptance -m "w01 and gpu1"     # WikiText-2, the seed's target: ppl < 55
"""
import pytest

from impl import adapters


@pytest.mark.check("w01", target="val_ppl")
def test_gpt_from_scratch_reaches_target_validation_perplexity(spec, runs, scorecard):
    for seeded in scorecard.each_seed(spec):  # once, or once per seed the profile asks for
        result = adapters.w01_train(seeded, runs)
        m = result.metrics
        scorecard.check(
            m["val_ppl"], data=m["data"], trivial={"unigram": m["unigram_val_ppl"]},
            curve=[(r["step"], r["loss"]) for r in result.train_log()],
            val_bits_per_byte=m["val_bpb"], ppl_vs_unigram=m["val_ppl"] / m["unigram_val_ppl"],
            params=m["params"], processes=m["world_size"], precision=seeded.train.precision,
            train_tokens_per_s=m["train_tokens_per_s"], peak_memory_mb=m["peak_memory_mb"],
            sample=m["sample"], artifacts=str(result.run_dir), reused_artifact=result.reused,
        )


@pytest.mark.check("w01", target="ddp_max_param_diff")
def test_ddp_trains_the_same_model_as_one_process(spec, runs, scorecard):
    r = adapters.w01_ddp_parity(spec, runs)
    scorecard.check(
        r["ddp_max_param_diff"],
        data=f"{spec.ddp_parity.steps} steps of the profile's w01 training, same global batch",
        curve=r["curve_ddp"],
        max_loss_diff=r["max_loss_diff"], processes=r["nproc"], backend=r["backend"],
        tokens_per_s_one_process=r["tokens_per_s_single"], tokens_per_s_ddp=r["tokens_per_s_ddp"],
        scaling_efficiency=r["scaling_efficiency"],
    )
