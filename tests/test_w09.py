"""w09's sabotage twins (a 2-bit round-to-nearest quantiser fails the quality and memory targets; a server that
answers 500 to some requests fails the zero-failure target under the same locust protocol), the gpu1 paths shrunk
onto this CPU (WikiText- and Alpaca-format local data, vLLM's command line), and the server's contract: bad
requests get 4xx JSON and the server keeps serving, the API key, streaming as the openai client reads it, a request
joining a running batch (continuous batching) or waiting for it (static), a client gone mid-stream, 429 at
capacity, a busy port, clean stops."""
import asyncio
import http.client
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from impl import adapters
from impl.core.artifacts import Runs
from impl.core.errors import MilestonesError
from impl.core.profiles import ProfileError, load_profile, override
from impl.w09_serve import load as load_test
from impl.w09_serve.batching import Stream
from impl.w09_serve.server import create_app, transformers_backend, vllm_command
from tests.conftest import tiny_llama_dir

CPU = load_profile("cpu").milestone("w09")
GPU1 = load_profile("gpu1").milestone("w09")
FAST_SERVE = {"startup_timeout_s": 120, "max_prompt_tokens": 64, "max_tokens_limit": 32}
LONG_ANSWERS = {**FAST_SERVE, "max_tokens_limit": 400}  # long enough to still be running when the test acts
LONG = 400


@pytest.fixture
def runs(tmp_path):
    return Runs("w09", "test", root=tmp_path / "artifacts")


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory):
    return tiny_llama_dir(tmp_path_factory.mktemp("tiny-chat-llama"))


# --- sabotage twins: quantisation ----------------------------------------------------------------------------
def test_two_bit_round_to_nearest_fails_the_cpu_quality_and_memory_targets(runs):
    """The cpu protocol on fewer tokens and examples, SmolLM2 as the model; every variant replaced by a 2-bit
    round-to-nearest copy: perplexity explodes, and the weights (de-quantised fp32) take as much memory as before."""
    spec = override(CPU, model="fixture:smollm2", quantize={"ppl_tokens": 1024, "rouge_examples": 4})
    m = adapters.w09_quantize(spec, spec.model, runs, sabotage_bits=2).metrics
    base = m["variants"]["none"]
    for variant in ("int8", "nf4"):
        v = m["variants"][variant]
        for quantity, measured in (("ppl", "ppl"), ("memory", "memory_footprint_mb")):
            target = CPU.targets[f"{variant}_{quantity}"]
            checked = target.checked_value(v[measured], {"unquantised": base[measured]})
            assert not target.passes(checked), f"{variant}_{quantity}: {checked}"
        assert v["ppl_ratio"] > 5


# --- sabotage twin: a server without batching ------------------------------------------------------------------
@pytest.mark.timing
def test_the_profiles_server_with_its_batch_limited_to_one_fails_the_cpu_latency_and_throughput_targets(tmp_path):
    """The cpu profile's model, serving settings and mixed-length protocol, but at most one request in the batch
    (`max_batch_size: 1`), against the same reference the acceptance check uses (the model served one request at a
    time, measured once in this process). Without batching there is nothing to gain: ratios ~1."""
    profile = load_profile("cpu")
    model = adapters.w09_model(CPU, profile, Runs("w09", profile.name))
    r = adapters.w09_serve_under_load(CPU, model, tmp_path / "load", {"max_batch_size": 1})
    ref = r["reference"]
    assert r["failed_requests"] == 0 and r["mean_running_per_token"] == 1 and ref["mean_running_per_token"] == 1
    for name in ("mean_latency_ms", "requests_per_s"):
        target = CPU.targets[name]
        checked = target.checked_value(r[name], {"one_at_a_time": ref[name]})
        assert not target.passes(checked), f"{name} = {r[name]} vs {ref[name]} one at a time: {checked}"


# --- the gpu1 path, shrunk -----------------------------------------------------------------------------------
def gpu1_shrunk(model, wikitext_dir, alpaca_dir, profile=GPU1):
    return override(profile, model=model, instructions={"local_dir": str(alpaca_dir), "eval_examples": 4, "val_fraction": 0.3},
                    quantize={"ppl_data": {"local_dir": str(wikitext_dir)}, "ppl_tokens": 512, "ppl_window": 128,
                              "rouge_examples": 4, "max_new_tokens": 4, "batch_size": 4},
                    serve={"backend": "transformers", "quantization": "none", "dtype": "float32", "startup_timeout_s": 120},
                    load={"duration_s": 3, "users": 2, "spawn_rate": 2, "max_tokens": 4})


@pytest.mark.gpu_smoke
def test_gpu1_quantisation_path_runs_here_shrunk(tiny_chat_model, wikitext_like_dir, alpaca_like_dir, runs):
    """WikiText-2's test split (hub layout, local dir) for perplexity, Alpaca-format held-out examples, both
    bitsandbytes variants."""
    assert GPU1.quantize.ppl_data.source == "hub" and GPU1.quantize.ppl_data.split == "test"
    spec = gpu1_shrunk(tiny_chat_model, wikitext_like_dir, alpaca_like_dir)
    m = adapters.w09_quantize(spec, tiny_chat_model, runs).metrics
    assert set(m["variants"]) == {"none", "int8", "nf4"} and "test split" in m["ppl_data"] and m["rouge_examples"] == 4
    assert m["variants"]["nf4"]["memory_ratio"] < m["variants"]["int8"]["memory_ratio"] < 1


@pytest.mark.gpu_smoke
@pytest.mark.gpu_smoke
def test_gpu12gb_quantisation_path_with_the_unquantised_reference_partly_in_cpu_memory(
        tiny_chat_model, wikitext_like_dir, alpaca_like_dir, runs):
    """The 12 GB profile keeps at most 10 GB of the bf16 reference on the GPU (accelerate's device_map, the rest in
    CPU memory). Here, without a GPU, the same loading call places everything in CPU memory."""
    gpu12 = load_profile("gpu12gb").milestone("w09")
    assert gpu12.quantize.unquantised_max_gpu_memory_gb == 10 and gpu12.serve.quantization == "bitsandbytes"
    spec = gpu1_shrunk(tiny_chat_model, wikitext_like_dir, alpaca_like_dir, profile=gpu12)
    m = adapters.w09_quantize(spec, tiny_chat_model, runs).metrics
    assert set(m["variants"]) == {"none", "int8", "nf4"} and m["variants"]["none"]["ppl_ratio"] == 1.0
    assert m["variants"]["nf4"]["memory_ratio"] < 1


def test_gpu1_serving_protocol_runs_here_on_the_transformers_backend(tiny_chat_model, wikitext_like_dir,
                                                                     alpaca_like_dir, tmp_path):
    """The gpu1 load protocol (chat endpoint, API key, locust) against the CPU backend; vLLM itself needs a GPU."""
    spec = gpu1_shrunk(tiny_chat_model, wikitext_like_dir, alpaca_like_dir)
    r = adapters.w09_serve_under_load(spec, tiny_chat_model, tmp_path / "load")
    assert r["requests"] > 0 and r["failed_requests"] == 0 and r["requests_per_s"] > 0
    assert r["generated_tokens"] > 0 and r["mean_running_per_token"] >= 1 and r["batching"] == "continuous"
    # gpu1's mixed-length protocol: streamed, so time to first token and inter-token latency come from the events
    assert GPU1.load.stream and not GPU1.load.fixed_output_length and GPU1.load.max_tokens_bounds == (8, 24)
    assert 0 < r["ttft_ms_p50"] <= r["p50_latency_ms"] and "streamed (SSE)" in r["protocol"]


def test_vllm_gets_the_profiles_settings_and_a_missing_vllm_is_a_clear_error(tiny_chat_model):
    s = GPU1.serve
    cmd = vllm_command("/m", "127.0.0.1", 8001, "w09", s.quantization, s.dtype, "k", s.max_batch_size,
                       s.max_prompt_tokens, s.max_tokens_limit)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    opts = dict(zip(cmd[3::2], cmd[4::2]))
    assert opts["--quantization"] == s.quantization == "fp8" and opts["--api-key"] == "k"
    assert opts["--max-model-len"] == str(s.max_prompt_tokens + s.max_tokens_limit)
    p = subprocess.run([sys.executable, "-m", "impl", "serve", "--model", tiny_chat_model, "--backend", "vllm",
                        "--port", str(load_test.free_port())], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "needs vLLM" in p.stderr


# --- the server's contract -----------------------------------------------------------------------------------
def _running(model, tmp_path_factory, folder: str, **settings):
    """`python -m impl serve` with the cpu profile's settings changed by `settings`, as a real process."""
    serve = CPU.serve.model_copy(update=settings)
    log = tmp_path_factory.mktemp(folder) / "server.log"
    return load_test.running_server(model, serve, log, api_key="secret", name="tiny")


@pytest.fixture(scope="module")
def server(tiny_chat_model, tmp_path_factory):
    """The server as users start it: continuous batching (the default)."""
    with _running(tiny_chat_model, tmp_path_factory, "server", **FAST_SERVE, batching="continuous") as s:
        yield s


@pytest.fixture(scope="module")
def long_chat_model(tmp_path_factory):
    """The tiny model with room for a 400-token answer (seconds of generating here)."""
    return tiny_llama_dir(tmp_path_factory.mktemp("tiny-long"), max_positions=512)


@pytest.fixture(scope="module")
def static_server(long_chat_model, tmp_path_factory):
    with _running(long_chat_model, tmp_path_factory, "static", **LONG_ANSWERS, batching="static") as s:
        yield s


def post(server, path, body, api_key="secret", raw=None):
    status, text = load_test.http(server.url + path, raw if raw is not None else json.dumps(body).encode(), api_key)
    return status, json.loads(text)


CHAT = {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 4}


def test_completions_and_chat_answer_in_openai_format(server):
    status, r = post(server, "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 5, "model": "tiny"})
    assert status == 200 and r["object"] == "text_completion" and isinstance(r["choices"][0]["text"], str)
    assert r["usage"]["completion_tokens"] <= 5 and r["choices"][0]["finish_reason"] in ("stop", "length")
    status, r = post(server, "/v1/chat/completions", CHAT)
    assert status == 200 and r["choices"][0]["message"]["role"] == "assistant"
    status, text = server.get("/health")
    assert status == 200 and json.loads(text) == {"status": "ok", "model": "tiny", "quantization": "none"}


def test_sampled_and_greedy_requests_are_served_side_by_side(server):
    """Greedy and sampled requests run on two continuous-batching managers of the same model."""
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda t: post(server, "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 8,
                                                                      "temperature": t, "top_p": 0.9}),
                            [0.0, 1.0, 0.0, 1.5]))
    assert [status for status, _ in got] == [200] * 4
    assert got[0][1]["choices"][0]["text"] == got[2][1]["choices"][0]["text"]  # greedy: the same answer twice


def test_ignore_eos_generates_exactly_max_tokens_for_the_fixed_length_load_protocol(server):
    status, r = post(server, "/v1/completions", {"prompt": "Hi", "max_tokens": 7, "ignore_eos": True})
    assert status == 200 and r["usage"]["completion_tokens"] == 7 and r["choices"][0]["finish_reason"] == "length"


def test_the_official_openai_client_talks_to_the_server(server):
    """Compatibility as users meet it: the `openai` package, pointed at our base URL."""
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="secret", max_retries=0)
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens <= 3
    text = client.completions.create(model="tiny", prompt="Once upon", max_tokens=3)
    assert isinstance(text.choices[0].text, str) and text.choices[0].finish_reason in ("stop", "length")
    assert [m.id for m in client.models.list()] == ["tiny"]
    with pytest.raises(openai.BadRequestError, match="exceeds this server's limit"):
        client.completions.create(model="tiny", prompt="Hi", max_tokens=1000)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).completions.create(
            model="tiny", prompt="Hi", max_tokens=1)


@pytest.fixture(scope="module")
def small_server(long_chat_model, tmp_path_factory):
    """Continuous batching with room for 2 running requests and 1 waiting one: capacity and cancellation."""
    with _running(long_chat_model, tmp_path_factory, "small", **LONG_ANSWERS, batching="continuous",
                  max_batch_size=2, max_queue=1) as s:
        yield s


def open_stream(server, body, path="/v1/completions"):
    """A streamed request on its own connection: (connection, response whose headers have arrived)."""
    from urllib.parse import urlsplit

    url = urlsplit(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    conn.request("POST", path, json.dumps({**body, "stream": True}),
                 {"Authorization": "Bearer secret", "Content-Type": "application/json"})
    return conn, conn.getresponse()


def events(response):
    """The server-sent events' JSON bodies, until [DONE]."""
    for line in response:
        line = line.decode().strip()
        if line == "data: [DONE]":
            return
        if line.startswith("data: "):
            yield json.loads(line[6:])


def metric(server, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = server.get("/metrics")[1]
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def test_the_openai_client_streams_chat_and_completions_token_by_token_as_the_answer_it_would_get_whole(server):
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="secret", max_retries=0)
    messages = [{"role": "user", "content": "Name three colours."}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # more than one piece

    whole = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=10, extra_body={"ignore_eos": True})
    pieces = list(client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=10, stream=True,
                                            extra_body={"ignore_eos": True}))
    assert "".join(p.choices[0].text for p in pieces) == whole.choices[0].text
    assert pieces[-1].choices[0].finish_reason == "length" and len(pieces) > 2


@pytest.mark.parametrize("batching,short_first", [("continuous", True), ("static", False)])
def test_a_short_request_joins_a_running_batch_only_under_continuous_batching(
        request, batching, short_first):
    """A long answer is being streamed when a 2-token request arrives: continuous batching takes it in at the next
    step and finishes it long before the long one; static batching makes it wait for the whole running batch."""
    # (the long answer is read to its end either way: that is the order being compared)
    server = request.getfixturevalue("small_server" if batching == "continuous" else "static_server")
    conn, response = open_stream(server, {"prompt": "Once", "max_tokens": 100, "ignore_eos": True})
    long_events = events(response)
    next(long_events)  # the long answer is being generated
    with ThreadPoolExecutor(1) as pool:
        short = pool.submit(lambda: (post(server, "/v1/completions", {"prompt": "Hi", "max_tokens": 2}),
                                     time.monotonic()))
        received = 1 + sum(1 for _ in long_events)
        long_done = time.monotonic()
        (status, r), short_done = short.result()
    conn.close()
    assert status == 200 and received >= 2
    assert (short_done < long_done) == short_first, (batching, short_done - long_done)


def test_a_client_gone_mid_stream_frees_its_place_and_its_generation_stops(small_server):
    before = metric(small_server, "llm_generated_tokens_total")
    conn, response = open_stream(small_server, {"prompt": "Once", "max_tokens": LONG, "ignore_eos": True})
    stream = events(response)
    next(stream), next(stream)
    conn.close()  # the client goes away after two chunks
    deadline = time.monotonic() + 10
    while metric(small_server, "llm_requests_running") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(small_server, "llm_requests_running") == 0
    made, settled = metric(small_server, "llm_generated_tokens_total"), False
    while not settled and time.monotonic() < deadline:  # the step under way when it left may still add a token
        time.sleep(0.3)
        made, settled = metric(small_server, "llm_generated_tokens_total"), made
        settled = settled == made
    assert settled, "tokens are still being generated for a request whose client has gone"
    assert made - before < LONG  # stopped long before its max_tokens
    assert post(small_server, "/v1/completions", {"prompt": "Hi", "max_tokens": 2})[0] == 200


def test_at_capacity_a_request_gets_429_with_retry_after_and_the_server_keeps_serving(small_server):
    """2 running + 1 waiting fill the small server; the fourth is refused at once, not queued without bound."""
    opened = [open_stream(small_server, {"prompt": "Once", "max_tokens": LONG, "ignore_eos": True}) for _ in range(3)]
    from urllib.error import HTTPError
    from urllib.request import Request, urlopen

    req = Request(small_server.url + "/v1/completions", json.dumps({"prompt": "Hi", "max_tokens": 2}).encode(),
                  {"Authorization": "Bearer secret", "Content-Type": "application/json"})
    with pytest.raises(HTTPError) as refused:
        urlopen(req, timeout=30)
    body = json.loads(refused.value.read())
    assert refused.value.code == 429 and refused.value.headers["Retry-After"] == "1"
    assert body["error"]["type"] == "rate_limit_error" and "capacity" in body["error"]["message"]
    for conn, _ in opened:
        conn.close()
    deadline = time.monotonic() + 10
    while metric(small_server, "llm_requests_running") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert post(small_server, "/v1/completions", {"prompt": "Hi", "max_tokens": 2})[0] == 200


@pytest.mark.parametrize("path,body,raw,status,mentions", [
    ("/v1/completions", None, b"{not json", 400, "invalid JSON"),
    ("/v1/completions", [1, 2], None, 400, "JSON object"),
    ("/v1/completions", {"max_tokens": 4}, None, 400, "prompt: Field required"),
    ("/v1/chat/completions", {"max_tokens": 4}, None, 400, "messages: Field required"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": "4"}, None, 400, "max_tokens"),
    ("/v1/completions", {"prompt": 42}, None, 400, "prompt"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, None, 400, "role"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 33}, None, 400, "limit 32"),
    ("/v1/completions", {"prompt": "word " * 100}, None, 400, "limit is 64"),
    ("/v1/completions", {"prompt": ""}, None, 400, "at least 1"),
    ("/v1/completions", {"prompt": []}, None, 400, "prompt"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, None, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "model": "gpt-4"}, None, 404, "not served here"),
    ("/v1/completions", {"prompt": "hi", "stream": True, "n": 2}, None, 400, "only n=1"),
    ("/v1/completions", {"prompt": ["a", "b"], "stream": True}, None, 400, "takes one prompt"),
    ("/v1/completions", {"prompt": "hi", "stream_options": {"include_usage": True}}, None, 400, "only allowed with"),
    ("/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"chunks": 2}}, None, 400, "include_usage"),
    ("/v1/chat/completions", {**CHAT, "stream": True, "logprobs": True}, None, 400, "unsupported parameter(s) logprobs"),
    ("/v1/nothing", {"prompt": "hi"}, None, 404, "Not Found"),
    # hostile but valid JSON: a lone UTF-16 surrogate, a body nested 5,000 deep (both were 500s)
    ("/v1/chat/completions", None, b'{"messages": [{"role": "user", "content": "\\ud800"}]}', 400, "not valid Unicode"),
    ("/v1/completions", None, b'{"prompt": "hi", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "nested too deeply"),
    # parameters this backend would silently ignore
    ("/v1/completions", {"prompt": "hi", "logprobs": 5}, None, 400, "unsupported parameter(s) logprobs"),
    ("/v1/chat/completions", {**CHAT, "presence_penalty": 0.5, "stop": ["\n"]}, None, 400,
     "presence_penalty, stop"),
])
def test_a_bad_request_gets_a_4xx_json_error_and_the_server_keeps_serving(server, path, body, raw, status, mentions):
    got, r = post(server, path, body, raw=raw)
    assert got == status and mentions in r["error"]["message"], r
    assert post(server, "/v1/chat/completions", CHAT)[0] == 200


def test_no_op_values_of_unsupported_parameters_and_bookkeeping_fields_are_accepted(server):
    body = {**CHAT, "logprobs": False, "presence_penalty": 0, "stop": None, "user": "someone"}
    assert post(server, "/v1/chat/completions", body)[0] == 200


def test_a_body_over_the_size_limit_gets_413_before_it_is_parsed_and_the_server_keeps_serving(server):
    """A client announcing 5 MiB (the default limit is 4 MiB) is answered before it sends a byte of the body."""
    import http.client

    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", "/v1/completions")
    for k, v in {"Content-Type": "application/json", "Authorization": "Bearer secret",
                 "Content-Length": str(5 * 2**20)}.items():
        conn.putheader(k, v)
    conn.endheaders()  # headers only: the server must not wait for the body
    answer = conn.getresponse()
    r = json.loads(answer.read())
    conn.close()
    assert answer.status == 413 and r["error"]["code"] == "body_too_large" and "4,194,304" in r["error"]["message"]
    assert post(server, "/v1/chat/completions", CHAT)[0] == 200


def test_without_the_api_key_the_server_answers_401(server):
    for key in (None, "wrong"):
        status, r = post(server, "/v1/chat/completions", CHAT, api_key=key)
        assert status == 401 and r["error"]["type"] == "authentication_error"
    assert load_test.http(server.url + "/health")[0] == 200  # health needs no key (load balancers probe it)


def test_concurrent_requests_are_batched_and_counted_in_metrics(static_server):
    before = load_test.server_batches(static_server)
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: post(static_server, "/v1/completions",
                                                {"prompt": f"Count to {i}", "max_tokens": 16})[0], range(8)))
    after = load_test.server_batches(static_server)
    batches = after["batches"] - before["batches"]
    assert statuses == [200] * 8 and 1 <= batches < 8, f"8 concurrent requests ran in {batches} batches"
    _, text = static_server.get("/metrics")
    assert 'llm_requests_total{route="/v1/completions",status="200"}' in text and "llm_queue_depth" in text


def test_a_healthy_server_has_no_failed_requests_under_the_load_protocol(healthy_load):
    assert healthy_load["successful_requests"] > 0 and healthy_load["failed_requests"] == 0
    assert CPU.targets["failed_requests"].passes(healthy_load["failed_requests"])


# --- sabotage twins: servers that fail some, all, or never answer ----------------------------------------------
class Sabotaged:
    """The real batching backend, except that requests fail inside the model (a 500) or never finish."""

    def __init__(self, backend, fail_every: int = 0, hang: bool = False):
        self.backend, self.fail_every, self.hang = backend, fail_every, hang
        self.count, self.lock = 0, threading.Lock()

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def submit(self, *args, **kw):
        with self.lock:
            self.count += 1
            failing = self.fail_every and self.count % self.fail_every == 0
        if not failing and not self.hang:
            return self.backend.submit(*args, **kw)
        stream = Stream(asyncio.get_running_loop(), 1, False, on_cancel=lambda s: None)
        if not self.hang:  # a hung one never ends: the request waits until the client gives up
            stream.fail(RuntimeError("injected fault"))
        return stream


LOAD_3S = CPU.load.model_copy(update={"duration_s": 3, "max_tokens": 4, "drain_s": 3})
PROMPTS = ["Say hi.", "Name a fruit."]


def _load_against(backend, tmp_path) -> dict:
    """The cpu load protocol (3 s) against `backend` in a real uvicorn server on loopback."""
    import uvicorn

    app = create_app(backend, "tiny", api_key="secret")
    port = load_test.free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        return load_test.run_locust(f"http://127.0.0.1:{port}", LOAD_3S, PROMPTS, tmp_path, api_key="secret")
    finally:
        server.should_exit = True
        thread.join(30)
        backend.close()


@pytest.fixture(scope="module")
def healthy_load(server, tmp_path_factory):
    """The same 3 s protocol against the healthy tiny server: the reference the twins are judged against."""
    r = load_test.run_locust(server.url, LOAD_3S, PROMPTS, tmp_path_factory.mktemp("healthy"), api_key="secret")
    assert r["enough_successful_requests"] and r["failed_requests"] == 0, r
    return r


def _fails_latency_and_throughput(r, healthy):
    for name in ("mean_latency_ms", "requests_per_s"):
        target = CPU.targets[name]
        checked = target.checked_value(r[name], {"one_at_a_time": healthy[name]})
        assert not target.passes(checked), f"{name}: {r[name]} (checked {checked})"


def test_a_server_answering_500_to_some_requests_fails_the_zero_failure_target(tiny_chat_model, tmp_path):
    r = _load_against(Sabotaged(transformers_backend(tiny_chat_model, max_batch_size=8), fail_every=3), tmp_path)
    assert r["failed_requests"] > 0 and any("error event" in f or "HTTP 500" in f for f in r["failures"]), r
    assert not CPU.targets["failed_requests"].passes(r["failed_requests"])


def test_a_server_answering_every_request_with_a_fast_500_fails_latency_throughput_and_failures(
        tiny_chat_model, tmp_path, healthy_load):
    """Fast answers that are all errors: locust's own average would be a few ms and pass; ours counts successes."""
    r = _load_against(Sabotaged(transformers_backend(tiny_chat_model, max_batch_size=8), fail_every=1), tmp_path)
    assert r["requests"] > 0 and r["successful_requests"] == 0 and r["requests_per_s"] == 0, r
    assert r["mean_latency_ms"] != r["mean_latency_ms"] and not r["enough_successful_requests"]  # NaN: nothing to time
    _fails_latency_and_throughput(r, healthy_load)
    assert not CPU.targets["failed_requests"].passes(r["failed_requests"])


def test_a_model_failing_mid_stream_ends_the_stream_with_an_error_event(tiny_chat_model):
    import uvicorn

    app = create_app(Sabotaged(transformers_backend(tiny_chat_model, max_batch_size=2), fail_every=1), "tiny")
    port = load_test.free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/v1/chat/completions", json.dumps({**CHAT, "stream": True}),
                     {"Content-Type": "application/json"})
        got = list(events(conn.getresponse()))
        assert got[0]["choices"][0]["delta"]["role"] == "assistant"
        assert got[-1]["error"]["type"] == "server_error" and "injected fault" in got[-1]["error"]["message"]
    finally:
        server.should_exit = True
        thread.join(30)


def test_a_server_that_never_answers_fails_latency_and_throughput(tiny_chat_model, tmp_path, healthy_load):
    """No request completes in the window nor in the drain: locust reports latency 0 and no failures, which passed
    before; here every request sent is unfinished, so failed."""
    r = _load_against(Sabotaged(transformers_backend(tiny_chat_model, max_batch_size=8), hang=True), tmp_path)
    assert r["successful_requests"] == 0 and r["requests_per_s"] == 0, r
    assert r["unfinished_requests"] > 0 and r["failed_requests"] == r["unfinished_requests"], r
    _fails_latency_and_throughput(r, healthy_load)
    assert not CPU.targets["failed_requests"].passes(r["failed_requests"])


def test_requests_per_second_counts_successes_inside_the_stated_window_and_latency_every_request_sent_in_it():
    log = [{"start": 100.0 + i, "latency_ms": 2500.0 + 1000 * (i >= 8), "ok": True} for i in range(10)]
    log += [{"start": 100.5, "latency_ms": 10.0, "ok": False}]
    log += [{"sent": x["start"]} for x in log] + [{"sent": 109.5}]  # one sent and never finished
    r = load_test.window_numbers(log, duration_s=10, min_successful=4)
    assert r["successful_requests"] == 8 and r["requests_per_s"] == pytest.approx(0.8)  # the last two end late
    assert r["finished_after_the_window"] == 2 and r["unfinished_requests"] == 1
    assert r["failed_requests"] == 2 and r["requests"] == 12
    # the late ones count in the latency (drained), the failure does not
    assert r["mean_latency_ms"] == pytest.approx((8 * 2500 + 2 * 3500) / 10)
    few = load_test.window_numbers(log[:2], duration_s=10, min_successful=4)
    assert few["mean_latency_ms"] != few["mean_latency_ms"] and few["requests_per_s"] == pytest.approx(0.2)


def test_w09_refuses_instructions_that_are_not_w07s_held_out_examples(tmp_path):
    """w09 scores w07's model on "held-out" examples: if its data section drifts from w07's, some of them may be
    w07's training examples. Refused before anything trains."""
    import yaml

    raw = yaml.safe_load(open(load_profile("cpu").path))
    raw["name"] = "drifted"
    raw["milestones"]["w09"]["instructions"] = {**raw["milestones"]["w09"]["instructions"], "eval_examples": 12}
    path = tmp_path / "drifted.yaml"
    path.write_text(yaml.safe_dump(raw))
    profile = load_profile(path)
    with pytest.raises(MilestonesError, match="not w07's held-out examples .*in w07's training set"):
        adapters.w09_model(profile.milestone("w09"), profile, Runs("w09", "drifted", root=tmp_path))
    assert not (tmp_path / "w07").exists()


# --- lifecycle and bad input ---------------------------------------------------------------------------------
def test_a_port_in_use_is_a_clear_error_before_the_model_loads(tiny_chat_model, server):
    port = server.url.rsplit(":", 1)[1]
    p = subprocess.run([sys.executable, "-m", "impl", "serve", "--model", tiny_chat_model, "--port", port],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and f"port {port} on 127.0.0.1 is already in use" in p.stderr
    assert server.get("/health")[0] == 200  # the running server is untouched


def test_the_server_stops_when_the_test_using_it_fails(tiny_chat_model, tmp_path):
    serve = CPU.serve.model_copy(update=FAST_SERVE)
    with pytest.raises(RuntimeError, match="the test failed"):
        with load_test.running_server(tiny_chat_model, serve, tmp_path / "server.log") as s:
            process = s.process
            raise RuntimeError("the test failed")
    assert process.poll() is not None


def test_a_server_with_a_corrupt_checkpoint_is_reported_with_its_log(tiny_chat_model, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_chat_model, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    serve = CPU.serve.model_copy(update=FAST_SERVE)
    with pytest.raises(load_test.LoadTestError, match="(?s)exited with code 2.*error: cannot load"):
        with load_test.running_server(str(broken), serve, tmp_path / "server.log"):
            pass


@pytest.mark.parametrize("change,message", [
    ({"load": {"max_tokens": 300}}, "exceeds serve.max_tokens_limit"),
    ({"serve": {"quantization": "gptq"}}, "backend transformers serves quantization"),
    ({"quantize": {"variants": ["int8"]}}, "target nf4_(ppl|memory) needs 'nf4'"),
    ({"serve": {"backend": "tgi"}}, "backend"),
])
def test_a_bad_w09_section_is_refused_with_the_reason(tmp_path, change, message):
    import yaml

    from impl.core.profiles import deep_merge

    raw = yaml.safe_load((load_profile("cpu").path).read_text())
    deep_merge(raw["milestones"]["w09"], change)
    raw["milestones"] = {"w09": raw["milestones"]["w09"]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ProfileError, match=message):
        load_profile(path)
