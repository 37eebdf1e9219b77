"""w09 end to end: the model to serve (w07's merged output), its quantised variants measured, and the load test.

    python -m impl train w09 --profile cpu    # the quantisation table and one load test, as the acceptance checks
"""
from __future__ import annotations

import secrets
from pathlib import Path

from impl.core.artifacts import RunResult, Runs, write_json
from impl.core.errors import MilestonesError
from impl.w07_lora.data import load_splits
from impl.w09_serve import load as load_test
from impl.w09_serve import quantize
from impl.w09_serve.spec import W09Spec


def check_held_out(spec: W09Spec, w07) -> None:
    """w09 scores w07's model on w07's held-out instructions only: anything else would not be held-out."""
    w07_splits, ours = load_splits(w07.data), held_out(spec)
    if {e.id for e in ours.eval} != {e.id for e in w07_splits.eval}:
        raise MilestonesError(
            f"w09's instructions are not w07's held-out examples ({len(ours.eval)} vs {len(w07_splits.eval)}, "
            f"{len({e.id for e in ours.eval} & {e.id for e in w07_splits.train})} of them in w07's training set): "
            f"scoring {spec.model} on them would not be held-out. Make milestones.w09.instructions the same as "
            f"milestones.w07.data (the cpu profile uses a YAML anchor).")


def model_dir(spec: W09Spec, w07_run_dir: Path | None = None) -> str:
    """`w07:<variant>`: the merged model of the w07 run it receives (the caller got that run through the
    adapters); anything else is a model reference as-is."""
    if not spec.model.startswith("w07:"):
        return spec.model
    if w07_run_dir is None:
        raise MilestonesError(f"w09's model is {spec.model}: it needs that w07 run")
    return str(Path(w07_run_dir) / "merged")


def held_out(spec: W09Spec):
    return load_splits(spec.instructions)


def quantization(spec: W09Spec, model: str, runs: Runs, sabotage_bits: int | None = None) -> RunResult:
    splits = held_out(spec)
    config = {"model": model, "quantize": spec.quantize.model_dump(), "instructions": spec.instructions.model_dump(),
              "sabotage_bits": sabotage_bits}
    return quantize.run(model, spec.quantize, splits.eval, runs.dir_for(config, name="quantize"), splits.description,
                        sabotage_bits)


ONE_AT_A_TIME = {"batching": "static", "max_batch_size": 1}  # the reference: plain generate, request after request

_loads: dict[str, dict] = {}  # one load test per (model, server settings, protocol) in this process


def serve_under_load(spec: W09Spec, model: str, out_dir: Path, serve_as: dict | None = None) -> dict:
    """Start the server with the profile's settings (changed by `serve_as`, e.g. {"batching": "static"}), put the
    load on it, stop it; then, when the protocol names a reference, the same for the model served one request at
    a time. A configuration already loaded in this process is not loaded again (the timing checks, their twins
    and the benchmark share one reference, measured beside them on the same cores)."""
    serve = spec.serve.model_copy(update=serve_as or {})
    prompts = [e.prompt()[0]["content"] for e in held_out(spec).eval]
    result = dict(_load_once(spec, serve, model, prompts, out_dir))
    if spec.load.reference == "one_at_a_time":
        result["reference"] = _load_once(spec, spec.serve.model_copy(update=ONE_AT_A_TIME), model, prompts,
                                         out_dir / "one_at_a_time")
    out_dir.mkdir(parents=True, exist_ok=True)  # a load measured before wrote its files elsewhere
    write_json(out_dir / "load.json", result)
    return result


def _load_once(spec: W09Spec, serve, model: str, prompts: list[str], out_dir: Path) -> dict:
    import json

    key = json.dumps([model, serve.model_dump(), spec.load.model_dump(), prompts])
    if key not in _loads:
        _loads[key] = _one_load(spec, serve, model, prompts, out_dir)
    return _loads[key]


def _one_load(spec: W09Spec, serve, model: str, prompts: list[str], out_dir: Path) -> dict:
    key = secrets.token_hex(16)  # the load test authenticates like a client of a protected server
    with load_test.running_server(model, serve, out_dir / "server.log", api_key=key, name="w09") as server:
        result = load_test.run_locust(server.url, spec.load, prompts, out_dir, api_key=key, model_name="w09")
        result.update(load_test.server_batches(server))
    result.update({"backend": serve.backend, "batching": serve.batching, "served_quantization": serve.quantization,
                   "dtype": serve.dtype, "max_batch_size": serve.max_batch_size, "batch_wait_ms": serve.batch_wait_ms})
    return result
