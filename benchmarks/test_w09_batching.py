"""w09 speed (reported, not gated): requests/s of the dynamically batching server against the same server taking
one request at a time (`--max-batch-size 1`), the same model under the same locust load, as a ratio.

    pytest benchmarks -k w09        # alone on the machine: locust and the server share the cores with nothing else

The cpu profile's model, serving settings and load protocol; the model is w07's LoRA output (reused when its run
is complete). Under pytest-xdist pytest-benchmark disables itself and this runs once as a smoke test.
"""
import pytest

from impl import adapters
from impl.core.artifacts import Runs
from impl.core.profiles import load_profile

pytestmark = pytest.mark.timing  # run alone on the cores (python -m impl test runs these last)

PROFILE = load_profile("cpu")
W09 = PROFILE.milestone("w09")


@pytest.mark.benchmark(group="w09-serving")
def test_w09_batching_server_requests_per_s_vs_one_at_a_time(benchmark, tmp_path):
    """The cpu protocol loads the batching server, then its reference (one request at a time) on the same cores."""
    assert W09.load.reference == "one_at_a_time"
    model = adapters.w09_model(W09, PROFILE, Runs("w09", PROFILE.name))
    results = {}

    def load_both():
        results["batched"] = adapters.w09_serve_under_load(W09, model, tmp_path / "load")

    benchmark.pedantic(load_both, rounds=1, iterations=1)
    b = results["batched"]
    s = b["reference"]
    benchmark.extra_info.update({
        "protocol": b["protocol"],
        "batched_max_batch_size": b["max_batch_size"], "batched_mean_batch_size": b["mean_batch_size"],
        "batched_requests_per_s": b["requests_per_s"], "batched_mean_latency_ms": b["mean_latency_ms"],
        "one_at_a_time_requests_per_s": s["requests_per_s"], "one_at_a_time_mean_latency_ms": s["mean_latency_ms"],
        "requests_per_s_ratio_batched_over_one_at_a_time": b["requests_per_s"] / s["requests_per_s"],
        "failed_requests": b["failed_requests"] + s["failed_requests"],
    })
    print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in benchmark.extra_info.items()))
    assert b["successful_requests"] > 0 and s["successful_requests"] > 0 and s["mean_batch_size"] == 1
