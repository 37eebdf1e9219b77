"""w09 — quantise the tuned model to 8 or 4 bits, deploy it as a REST API, load-test it with locust: mean latency
< 200 ms at > 20 requests/s on one GPU.

    pytest acceptance -m "w09 and cpu"    # w07's LoRA model: int8 / NF4 vs fp32, then the transformers server
    pytest acceptance -m "w09 and gpu1"   # a 7B model: bitsandbytes int8 / NF4, served by vLLM in fp8

The quantisation checks load the model unquantised and as each variant and score all of them with one protocol:
memory footprint, perplexity on held-out text, ROUGE-L on w07's held-out instructions (the table goes into the
scorecard). The serving checks start `python -m impl serve` as a real process on 127.0.0.1 with an API key, run
locust headless against it with the profile's fixed protocol and read locust's CSV; the server stops when the
test ends, whatever its outcome.
"""
import pytest

from impl import adapters
from impl.w09_serve.load import LoadTestError
from impl.w09_serve.quantize import table_markdown

_quantized: dict[str, object] = {}
_loads: dict[str, dict] = {}


def _model(spec, profile, runs) -> str:
    return adapters.w09_model(spec, profile, runs)


def _quantization(spec, profile, runs):
    """The unquantised model and every variant, measured once per spec in this process for the four checks."""
    key = spec.model_dump_json()
    if key not in _quantized:
        _quantized[key] = adapters.w09_quantize(spec, _model(spec, profile, runs), runs)
    return _quantized[key]


def _load(spec, profile, runs) -> dict:
    """One load test per spec in this process, read by the latency, throughput and failure checks."""
    key = spec.model_dump_json()
    if key not in _loads:
        out = runs.dir_for({"load": spec.serve.model_dump(), "protocol": spec.load.model_dump()}, name="load")
        _loads[key] = adapters.w09_serve_under_load(spec, _model(spec, profile, runs), out)
    return _loads[key]


def _check_quantized(scorecard, r, variant: str, quantity: str):
    m = r.metrics
    v, base = m["variants"][variant], m["variants"]["none"]
    measured, data = {"ppl": ("ppl", m["ppl_data"]), "memory": ("memory_footprint_mb", "the model's parameters and buffers")}[quantity]
    scorecard.check(
        v[measured], data=data, baselines={"unquantised": base[measured]}, model=m["model"], dtype=m["dtype"],
        quantization={"int8": "bitsandbytes LLM.int8()", "nf4": "bitsandbytes 4-bit NF4, double quantisation"}[variant],
        memory_footprint_mb=v["memory_footprint_mb"], ppl=v["ppl"], ppl_unquantised=base["ppl"],
        rougeL=v["rougeL"], rougeL_unquantised=base["rougeL"], rougeL_change=v["rougeL_change"],
        rouge_data=m["rouge_data"], table=table_markdown(m),
    )


@pytest.mark.check("w09", target="int8_ppl")
def test_int8_model_keeps_the_perplexity_of_the_unquantised_model(spec, profile, runs, scorecard):
    _check_quantized(scorecard, _quantization(spec, profile, runs), "int8", "ppl")


@pytest.mark.check("w09", target="nf4_ppl")
def test_4bit_model_stays_close_to_the_perplexity_of_the_unquantised_model(spec, profile, runs, scorecard):
    _check_quantized(scorecard, _quantization(spec, profile, runs), "nf4", "ppl")


@pytest.mark.check("w09", target="int8_memory")
def test_int8_model_takes_less_than_half_the_memory(spec, profile, runs, scorecard):
    _check_quantized(scorecard, _quantization(spec, profile, runs), "int8", "memory")


@pytest.mark.check("w09", target="nf4_memory")
def test_4bit_model_takes_a_fraction_of_the_memory(spec, profile, runs, scorecard):
    _check_quantized(scorecard, _quantization(spec, profile, runs), "nf4", "memory")


STREAMED = ("ttft_ms_p50", "ttft_ms_p95", "itl_ms_mean", "output_tokens_per_s", "prompt_tokens", "completion_tokens")


def _check_load(scorecard, load: dict, name: str):
    """One row of the load test; on cpu the latency and throughput targets are relative to the same model served
    one request at a time, measured right after on the same cores (its absolute numbers are in the row too).
    Streamed loads add time to first token and inter-token latency, for both."""
    if name == "mean_latency_ms" and not load["enough_successful_requests"]:
        raise LoadTestError(f"only {load['successful_requests']} of {load['requests']} requests succeeded within "
                            f"the window (at least {load['min_successful_requests']} needed): no latency to report")
    ref = load.get("reference")
    baselines = {"one_at_a_time": ref[name]} if "one_at_a_time" in scorecard.target.baselines else None
    reference = {f"one_at_a_time {k}": ref[k] for k in ("mean_latency_ms", "p95_latency_ms", "requests_per_s",
                                                         "successful_requests", "failed_requests", *STREAMED)
                 if k in ref} if ref else {}
    scorecard.check(
        load[name], data=load["protocol"], baselines=baselines, mean_latency_ms=load["mean_latency_ms"],
        p50_latency_ms=load["p50_latency_ms"], p95_latency_ms=load["p95_latency_ms"],
        p99_latency_ms=load["p99_latency_ms"], requests_per_s=load["requests_per_s"], requests=load["requests"],
        successful_requests=load["successful_requests"], failed_requests=load["failed_requests"],
        failures="\n".join(load["failures"]) or "none", backend=load["backend"],
        batching=load.get("batching", "n/a"), served_quantization=load["served_quantization"], dtype=load["dtype"],
        max_batch_size=load["max_batch_size"],
        mean_running_per_token=load.get("mean_running_per_token", "n/a (not reported by this backend)"),
        request_log=load["request_log"], **{k: load[k] for k in STREAMED if k in load}, **reference,
    )


@pytest.mark.timing
@pytest.mark.check("w09", target="mean_latency_ms")
def test_served_model_answers_within_the_latency_target_under_load(spec, profile, runs, scorecard):
    _check_load(scorecard, _load(spec, profile, runs), "mean_latency_ms")


@pytest.mark.timing
@pytest.mark.check("w09", target="requests_per_s")
def test_served_model_sustains_the_request_rate(spec, profile, runs, scorecard):
    _check_load(scorecard, _load(spec, profile, runs), "requests_per_s")


@pytest.mark.timing
@pytest.mark.check("w09", target="failed_requests")
def test_no_request_fails_under_load(spec, profile, runs, scorecard):
    _check_load(scorecard, _load(spec, profile, runs), "failed_requests")
