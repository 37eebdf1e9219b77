"""w09 speed under the mixed-length load (reported here; the acceptance checks gate the profile's own server):
continuous batching, static batching and one request at a time, the same model under the same locust protocol,
one after the other on the same cores, as ratios to one at a time.

    pytest benchmarks -k w09_batching       # alone on the machine: locust and the server share the cores

The cpu profile's model, serving settings and protocol (prompts of w07's held-out lengths, max_tokens drawn per
request, EOS honoured, streamed: time to first token and inter-token latency come from the events). The model
is w07's LoRA output (reused when its run is complete). Loads already measured in this process (the acceptance
checks' server and reference) are not measured again.
"""
import pytest

from impl import adapters
from impl.core.artifacts import Runs
from impl.core.profiles import load_profile

pytestmark = pytest.mark.timing  # run alone on the cores (python -m impl test runs these last)

PROFILE = load_profile("cpu")
W09 = PROFILE.milestone("w09")
NUMBERS = ("requests_per_s", "mean_latency_ms", "p95_latency_ms", "ttft_ms_p50", "ttft_ms_p95", "itl_ms_mean",
           "output_tokens_per_s", "failed_requests")


@pytest.mark.benchmark(group="w09-serving")
def test_w09_continuous_and_static_batching_against_one_at_a_time_under_the_mixed_load(benchmark, tmp_path):
    assert W09.load.reference == "one_at_a_time" and W09.load.stream and not W09.load.fixed_output_length
    model = adapters.w09_model(W09, PROFILE, Runs("w09", PROFILE.name))
    loads = {}

    def load_all():
        for batching in ("continuous", "static"):
            loads[batching] = adapters.w09_serve_under_load(W09, model, tmp_path / batching, {"batching": batching})
        loads["one_at_a_time"] = loads["continuous"]["reference"]

    benchmark.pedantic(load_all, rounds=1, iterations=1)
    ref = loads["one_at_a_time"]
    info = {"protocol": ref["protocol"]}
    for name, load in loads.items():
        info.update({f"{name}_{k}": load[k] for k in NUMBERS})
    for name in ("continuous", "static"):
        info[f"{name}_requests_per_s_over_one_at_a_time"] = loads[name]["requests_per_s"] / ref["requests_per_s"]
        info[f"{name}_mean_running_per_token"] = loads[name]["mean_running_per_token"]
    benchmark.extra_info.update(info)
    print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items()))
    assert all(load["successful_requests"] > 0 for load in loads.values())
