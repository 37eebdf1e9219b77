"""Start `python -m impl serve` as a real process on loopback, put locust's headless load on it, read the CSV.

`running_server` always stops the server it started (its whole process group), also when the code inside the
`with` fails, and reports the server's own log when it dies or never becomes healthy.
"""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from impl.core.errors import MilestonesError
from impl.w09_serve.spec import LoadSpec, ServeSpec

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


class LoadTestError(MilestonesError):
    pass


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    api_key: str | None
    log: Path

    def get(self, path: str) -> tuple[int, str]:
        return http(self.url + path, api_key=self.api_key)


def http(url: str, body: bytes | None = None, api_key: str | None = None, timeout: float = 60,
         headers: dict | None = None) -> tuple[int, str]:
    """(status, text) of a GET, or a POST of `body` as JSON; HTTP errors are answers, not exceptions."""
    h = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {}),
         **(headers or {})}
    req = urllib.request.Request(url, data=body, headers=h, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve_command(model: str, port: int, serve: ServeSpec, host: str = "127.0.0.1", name: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "impl", "serve", "--model", model, "--host", host, "--port", str(port),
           "--backend", serve.backend, "--quantization", serve.quantization, "--dtype", serve.dtype,
           "--batching", serve.batching, "--max-batch-size", str(serve.max_batch_size),
           "--max-queue", str(serve.max_queue), "--batch-wait-ms", str(serve.batch_wait_ms),
           "--max-prompt-tokens", str(serve.max_prompt_tokens), "--max-tokens-limit", str(serve.max_tokens_limit)]
    return cmd + (["--name", name] if name else [])


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


def stop(process: subprocess.Popen, grace_s: float = 15) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


@contextmanager
def running_server(model: str, serve: ServeSpec, log: Path, api_key: str | None = None, port: int | None = None,
                   name: str | None = None):
    """The server as a child process on 127.0.0.1, healthy, for the body of the `with`; stopped afterwards."""
    port = port or free_port()
    env = {**os.environ, "LLM_MILESTONES_API_KEY": api_key or ""}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        process = subprocess.Popen(serve_command(model, port, serve, name=name), stdout=out, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)  # its own group: stop() reaches its children
    server = Server(f"http://127.0.0.1:{port}", process, api_key, log)
    try:
        deadline = time.monotonic() + serve.startup_timeout_s
        while True:
            if process.poll() is not None:
                raise LoadTestError(f"the server exited with code {process.returncode} before it was healthy:\n"
                                    f"{_tail(log)}")
            try:
                if server.get("/health")[0] == 200:
                    break
            except OSError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise LoadTestError(f"the server was not healthy within {serve.startup_timeout_s:g} s:\n{_tail(log)}")
            time.sleep(0.5)
        yield server
    finally:
        stop(process)


def schedule(load: LoadSpec, prompts: list[str]) -> list[dict]:
    """The protocol's requests, taken in turn by the users: `load.prompts` of the prompts sampled with
    `load.seed`, each with its max_tokens (fixed, or drawn uniformly from the protocol's [lo, hi])."""
    import random

    rng = random.Random(load.seed)
    lo, hi = load.max_tokens_bounds
    chosen = rng.sample(prompts, min(load.prompts, len(prompts)))
    return [{"prompt": p, "max_tokens": rng.randint(lo, hi)} for p in chosen]


def _percentiles(values: list[float], enough: bool, prefix: str) -> dict:
    import numpy as np

    return {f"{prefix}_{k}": float(f(values)) if enough and values else math.nan
            for k, f in (("mean", np.mean), ("p50", np.median), ("p95", lambda v: np.percentile(v, 95)))}


def window_numbers(log: list[dict], duration_s: float, min_successful: int) -> dict:
    """The load test's numbers from its request log, as the protocol states them: latency over the successful
    requests sent in the window, each waited for to its end (the drain); requests/s = successful requests
    completed inside the window / the window; a request that answered an error, or was sent and never finished,
    failed. Fewer than `min_successful` successes leave the latencies NaN (a target never passes NaN), since a mean
    of nothing, or of two requests, is no latency of a server under load. Streamed requests add time to first
    token and inter-token latency (the time from the first token to the last / the tokens after the first, per
    request, as vLLM's benchmark's TPOT), output tokens/s and the prompt and answer lengths served."""
    import numpy as np

    sent = [r["sent"] for r in log if "sent" in r]
    log = [r for r in log if "sent" not in r]
    start = min([r["start"] for r in log] + sent, default=0.0)
    end = start + duration_s
    finished = [r for r in log if r["ok"]]
    done = [r for r in finished if r["start"] + r["latency_ms"] / 1000 <= end]
    ok = [r["latency_ms"] for r in finished]
    unfinished = max(len(sent) - len(log), 0)
    failed = [r for r in log if not r["ok"]]
    enough = len(ok) >= min_successful
    pct = (lambda q: float(np.percentile(ok, q))) if enough else (lambda q: math.nan)
    numbers = {
        "requests": len(log) + unfinished, "successful_requests": len(done), "failed_requests": len(failed) + unfinished,
        "unfinished_requests": unfinished, "finished_after_the_window": len(finished) - len(done),
        "requests_per_s": len(done) / duration_s,
        "mean_latency_ms": float(np.mean(ok)) if enough else math.nan,
        "p50_latency_ms": pct(50), "p95_latency_ms": pct(95), "p99_latency_ms": pct(99),
        "max_latency_ms": max(ok) if enough else math.nan, "enough_successful_requests": enough,
        "min_successful_requests": min_successful,
    }
    streamed = [r for r in finished if "ttft_ms" in r]
    if streamed:
        tokens = [r for r in streamed if (r.get("completion_tokens") or 0) > 1]
        numbers.update({
            **_percentiles([r["ttft_ms"] for r in streamed], enough, "ttft_ms"),
            **_percentiles([r["decode_ms"] / (r["completion_tokens"] - 1) for r in tokens], enough, "itl_ms"),
            "output_tokens_per_s": sum(r.get("completion_tokens") or 0 for r in done if "ttft_ms" in r) / duration_s,
            "prompt_tokens": _spread([r.get("prompt_tokens") for r in streamed]),
            "completion_tokens": _spread([r.get("completion_tokens") for r in streamed]),
        })
    return numbers


def _spread(values: list) -> str:
    import numpy as np

    v = [x for x in values if x is not None]
    return f"{min(v)}-{max(v)}, median {float(np.median(v)):g}" if v else "n/a"


def run_locust(url: str, load: LoadSpec, prompts: list[str], out_dir: Path, api_key: str | None = None,
               model_name: str | None = None) -> dict:
    """locust headless with the protocol of `load`; the numbers of its request log over the window."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "schedule.json").write_text(json.dumps(schedule(load, prompts), indent=0))
    prefix = out_dir / "locust"
    request_log = out_dir / "requests.jsonl"
    request_log.unlink(missing_ok=True)
    env = {**os.environ, "W09_SCHEDULE": str(out_dir / "schedule.json"), "W09_ENDPOINT": load.endpoint,
           "W09_API_KEY": api_key or "", "W09_REQUEST_LOG": str(request_log), "W09_MODEL": model_name or "",
           "W09_IGNORE_EOS": "1" if load.fixed_output_length else "0", "W09_STREAM": "1" if load.stream else "0"}
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(load.users),
           "-r", str(load.spawn_rate), "-t", f"{load.duration_s}s", "-s", str(load.drain_s), "--host", url,
           "--csv", str(prefix),
           "--only-summary", "--loglevel", "WARNING"]
    try:  # locust exits 1 when a request failed: that is a result, read from the log
        limit = load.duration_s + load.drain_s + 120
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        raise LoadTestError(f"locust did not finish within {limit} s") from None
    (out_dir / "locust.log").write_text(p.stdout + p.stderr)
    if not prefix.with_name("locust_stats.csv").exists():
        raise LoadTestError(f"locust did not run (exit code {p.returncode}):\n{(p.stdout + p.stderr)[-3000:]}")
    log = [json.loads(line) for line in request_log.read_text().splitlines()] if request_log.exists() else []
    failures_csv = prefix.with_name("locust_failures.csv")
    failures = [f"{r['Occurrences']}x {r['Error']}" for r in csv.DictReader(open(failures_csv))] \
        if failures_csv.exists() else []
    return {
        **window_numbers(log, load.duration_s, load.min_successful_requests), "failures": failures,
        "csv": str(prefix.with_name("locust_stats.csv")), "request_log": str(request_log),
        "protocol": protocol(load, min(load.prompts, len(prompts))),
    }


def protocol(load: LoadSpec, prompts: int) -> str:
    lo, hi = load.max_tokens_bounds
    lengths = f"max_tokens {lo}" if lo == hi else f"max_tokens drawn uniformly from [{lo}, {hi}]"
    ends = " exactly (ignore_eos)" if load.fixed_output_length else ", the model's EOS honoured"
    timing = ("streamed (SSE): time to first token, inter-token latency = (last token - first) / (tokens - 1)"
              if load.stream else "not streamed")
    return (f"locust headless, {load.users} users spawned at {load.spawn_rate:g}/s, {load.duration_s} s, no think "
            f"time; {load.endpoint}, {prompts} held-out prompts sampled with seed {load.seed} and taken in turn, "
            f"{lengths}{ends}, greedy, {timing}; latency over the successful requests sent in the window, each "
            f"waited for to its end (up to {load.drain_s} s after it; one unfinished then failed), requests/s = "
            f"successful requests completed in the {load.duration_s} s window / {load.duration_s} s")


def server_batches(server: Server) -> dict:
    """The batching server's own account, from /metrics: static batches and their mean size, tokens made and how
    many requests were being generated beside each (continuous batching has no batches to count)."""
    from prometheus_client.parser import text_string_to_metric_families

    status, text = server.get("/metrics")
    if status != 200:
        return {}
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels
               or "le" not in s.labels}
    count, total = samples.get("llm_batch_size_count", 0), samples.get("llm_batch_size_sum", 0)
    tokens, beside = (samples.get(f"llm_running_requests_per_token_{k}", 0) for k in ("count", "sum"))
    return {"batches": int(count), "mean_batch_size": total / count if count else math.nan,
            "generated_tokens": samples.get("llm_generated_tokens_total", math.nan),
            "mean_running_per_token": beside / tokens if tokens else math.nan}
