"""w09 speed (reported, not gated): how close greedy decoding comes to the weight-streaming bound of this machine.

    pytest benchmarks -k decode_bound      # alone on the machine: a bandwidth taken under load is worthless

Each decode step of a batch reads every weight of the model once (the KV cache of a short prompt is small beside
them), so steps/s cannot exceed memory bandwidth / bytes of weights. The bandwidth is measured here, STREAM-style:
a copy of a 256 MiB fp32 array into another (2 x 256 MiB moved per copy, McCalpin's counting), the best of the
rounds as STREAM reports it, with the median beside it. Decode steps/s of the cpu profile's served architecture
(SmolLM2-135M, fp32, the KV cache of transformers' `generate`) at batch 1 and 8, from the difference between
generating `NEW` tokens and one token after the same prompt (so the prompt's prefill drops out), as a fraction
of that bound. At batch 8 a step makes 8 tokens for the same weight traffic: that is what batching buys.
"""
import statistics
import time

import pytest
import torch

from impl.core.hf import resolve_model

pytestmark = pytest.mark.timing  # run alone on the cores (python -m impl test runs these last)

MODEL = "fixture:smollm2"  # w07's LoRA model merges into these same shapes
COPY_MIB, PROMPT, NEW = 256, 16, 48


def copy_bandwidth(benchmark=None, rounds: int = 10) -> tuple[float, float]:
    """(best, median) bytes/s of `dst.copy_(src)` over COPY_MIB-MiB fp32 arrays, read + write counted."""
    src = torch.rand(COPY_MIB * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch: pages are mapped before anything is timed
    times = []

    def copy():
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)

    if benchmark is not None:
        benchmark.pedantic(copy, rounds=rounds, iterations=1, warmup_rounds=1)
    else:
        for _ in range(rounds):
            copy()
    moved = 2 * src.numel() * 4
    return moved / min(times), moved / statistics.median(times)


def weight_bytes(model) -> int:
    """Bytes of the parameters a decode step reads: each tensor once (tied embeddings are one tensor)."""
    seen = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    return sum(seen.values())


@torch.inference_mode()
def decode_steps_per_s(model, batch: int, rounds: int = 3) -> float:
    """Greedy steps/s after a PROMPT-token prompt: (time for NEW tokens - time for 1) / (NEW - 1), median."""
    ids = torch.randint(100, 20000, (batch, PROMPT), generator=torch.Generator().manual_seed(0))

    def generate(new: int) -> float:
        t0 = time.perf_counter()
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                       do_sample=False, pad_token_id=0)
        return time.perf_counter() - t0

    generate(2)  # warm-up
    per_step = [(generate(NEW) - generate(1)) / (NEW - 1) for _ in range(rounds)]
    return 1 / statistics.median(per_step)


@pytest.mark.benchmark(group="w09-decode-bound")
def test_w09_decode_steps_per_s_against_the_weight_streaming_bound(benchmark):
    from transformers import AutoModelForCausalLM

    best, median = copy_bandwidth(benchmark)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(MODEL), dtype=torch.float32).eval()
    weights = weight_bytes(model)
    bound = best / weights  # steps/s if a step cost nothing but reading the weights once
    info = {"stream_copy_gb_per_s_best": best / 1e9, "stream_copy_gb_per_s_median": median / 1e9,
            "weight_mb_per_step": weights / 1e6, "bound_steps_per_s": bound}
    for batch in (1, 8):
        steps = decode_steps_per_s(model, batch)
        info.update({f"batch{batch}_tokens_per_s": steps * batch, f"batch{batch}_fraction_of_bound": steps / bound})
    benchmark.extra_info.update(info)
    print(" ".join(f"{k}={v:.3g}" for k, v in info.items()))
    assert 0 < info["batch1_fraction_of_bound"] and info["batch8_tokens_per_s"] > 0
