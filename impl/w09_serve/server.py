"""An OpenAI-compatible completion server for one model: `/v1/completions`, `/v1/chat/completions` (both also
streamed as server-sent events with `"stream": true`), `/v1/models`, `/health` and Prometheus `/metrics`.

    python -m impl serve --model artifacts/w07/lora/cpu/<run>/merged            # 127.0.0.1:8000, transformers
    python -m impl serve --model DIR --quantization nf4 --api-key secret --port 8001
    python -m impl serve --model DIR --batching static --max-batch-size 8        # the comparison: static batches
    python -m impl serve --model mistralai/Mistral-7B-v0.1 --backend vllm --quantization fp8   # GPU, the gpu extra

Backends. `transformers` (CPU or one GPU) batches with transformers' own continuous batching by default: a request
joins the running batch at the next decode step and leaves when it ends, each with its own pages of KV cache;
`--batching static` runs dynamic batches to their longest answer instead (impl/w09_serve/batching.py). `vllm` hands
the process over to vLLM's own OpenAI server (continuous batching, paged attention) with the same host, port, key
and limits; it serves the same routes.

Requests are validated before they reach the model: invalid JSON, missing or mistyped fields, a prompt longer
than `--max-prompt-tokens`, `max_tokens` above `--max-tokens-limit`, parameters this backend does not honour get
400 with an OpenAI-style JSON error naming them; a missing or wrong key (when `--api-key` or LLM_MILESTONES_API_KEY
is set) gets 401; more requests in flight than the running batch and `--max-queue` waiting ones get 429 with
Retry-After; an error inside the model gets 500 (mid-stream: an error event, then the end). None of them stops the
server. A client that disconnects mid-stream frees its place in the batch at the next step. A port already in use is
refused before the model loads.
"""
from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import sys
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator
from starlette.requests import Request  # at module level: FastAPI resolves the routes' annotations here

from impl.core.errors import MilestonesError
from impl.w09_serve.batching import ContinuousBatching, Generated, StaticBatching, Stream


class ServeError(MilestonesError):
    pass


class RequestError(Exception):
    """A request the server refuses: the status and the OpenAI-style error body."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.body = status, {"error": {"message": message, "type": kind, "param": param, "code": code}}
        self.headers = headers or {}


# --- requests --------------------------------------------------------------------------------------------
def _unicode(text: str) -> str:
    """JSON may carry lone UTF-16 surrogates ("\\ud800"): valid JSON, not text any tokenizer can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"not valid Unicode text ({e.reason} at position {e.start})") from None
    return text


# OpenAI parameters this backend does not honour: accepted only at their no-op values, refused otherwise rather
# than silently ignored (a client asking for logprobs must not get a completion without them)
NOOP_VALUES = {"logprobs": (None, False), "top_logprobs": (None, 0), "echo": (None, False), "best_of": (None, 1),
               "presence_penalty": (None, 0), "frequency_penalty": (None, 0), "stop": (None, []),
               "logit_bias": (None, {}), "seed": (None,), "suffix": (None,), "tools": (None, []),
               "tool_choice": (None, "none"), "response_format": (None,)}
IGNORED = {"user", "metadata", "store"}  # bookkeeping fields with no effect on the answer


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown fields are checked in `unsupported`, not dropped
    model: StrictStr | None = None
    max_tokens: StrictInt = Field(16, ge=1)
    temperature: StrictFloat | StrictInt = Field(0.0, ge=0.0, le=2.0)  # 0: greedy
    top_p: StrictFloat | StrictInt = Field(1.0, gt=0.0, le=1.0)
    n: StrictInt = 1
    stream: StrictBool = False
    stream_options: dict | None = None  # {"include_usage": true}: a last chunk with the usage, as OpenAI's
    ignore_eos: StrictBool = False  # vLLM's extension: generate exactly max_tokens (fixed-length load tests)


    def unsupported(self) -> list[str]:
        return sorted(k for k, v in (self.model_extra or {}).items()
                      if k not in IGNORED and v not in NOOP_VALUES.get(k, (None,)))


class CompletionRequest(_Request):
    prompt: StrictStr | list[StrictStr] = Field(min_length=1)

    @field_validator("prompt")
    @classmethod
    def _text(cls, v):
        return [_unicode(t) for t in v] if isinstance(v, list) else _unicode(v)


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: StrictStr

    @field_validator("content")
    @classmethod
    def _text(cls, v):
        return _unicode(v)


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)


# --- the HTTP app ------------------------------------------------------------------------------------------
MAX_BODY_BYTES = 4 * 2**20


def create_app(backend, model_name: str, api_key: str | None = None, max_prompt_tokens: int = 512,
               max_tokens_limit: int = 256, max_body_bytes: int = MAX_BODY_BYTES, max_queue: int = 64):
    """`max_queue`: requests that may wait beyond the running batch (`backend.max_batch_size`); more get 429."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from starlette.exceptions import HTTPException

    registry = CollectorRegistry()
    requests_total = Counter("llm_requests", "HTTP requests by route and status", ["route", "status"], registry=registry)
    latency = Histogram("llm_request_seconds", "end-to-end request time", ["route"], registry=registry,
                        buckets=(0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60))
    batch_sizes = Histogram("llm_batch_size", "requests generated together", registry=registry,
                            buckets=tuple(range(1, 65)))
    prompt_tokens = Counter("llm_prompt_tokens", "prompt tokens of served requests", registry=registry)
    generated_tokens = Counter("llm_generated_tokens", "tokens generated", registry=registry)
    Gauge("llm_queue_depth", "requests waiting for the model", registry=registry).set_function(backend.queue_depth)
    Gauge("llm_requests_running", "requests whose generation has not ended", registry=registry).set_function(
        backend.in_flight)
    running_per_token = Histogram("llm_running_requests_per_token", "requests being generated when a token was made",
                                  registry=registry, buckets=tuple(range(1, 65)))

    def on_tokens(made: int, running: int) -> None:
        generated_tokens.inc(made)
        for _ in range(made):
            running_per_token.observe(running)

    backend.on_tokens, backend.on_batch = on_tokens, batch_sizes.observe
    capacity = backend.max_batch_size + max_queue
    app = FastAPI(title=f"llm-milestones server: {model_name}")

    def error(status: int, message: str, kind: str = "invalid_request_error", **kw) -> JSONResponse:
        return JSONResponse(RequestError(status, message, kind, **kw).body, status_code=status)

    @app.middleware("http")
    async def auth_and_count(request: Request, call_next):
        t0 = time.perf_counter()
        route = request.url.path
        if api_key and route.startswith("/v1/") and request.headers.get("authorization") != f"Bearer {api_key}":
            response = error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                             "authentication_error", code="invalid_api_key")
        else:
            response = await call_next(request)
        known = route in ("/v1/completions", "/v1/chat/completions", "/health", "/metrics", "/v1/models")
        label = route if known else "other"
        requests_total.labels(label, str(response.status_code)).inc()
        latency.labels(label).observe(time.perf_counter() - t0)
        return response

    @app.exception_handler(RequestError)
    async def refused(request, exc: RequestError):
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail), "not_found_error" if exc.status_code == 404 else "invalid_request_error")

    @app.exception_handler(Exception)
    async def crashed(request, exc: Exception):
        return error(500, f"internal error: {exc.__class__.__name__}: {exc}", "server_error")

    def check(req: _Request, prompts: list[list[int]]) -> None:
        names = req.unsupported()
        if names:
            raise RequestError(400, f"unsupported parameter(s) {', '.join(names)}: the transformers backend does not "
                               "honour them (vLLM's server does)", param=names[0])
        if req.stream_options is not None:
            if not req.stream:
                raise RequestError(400, "stream_options is only allowed with stream=true", param="stream_options")
            unknown = sorted(set(req.stream_options) - {"include_usage"})
            if unknown or not isinstance(req.stream_options.get("include_usage", False), bool):
                raise RequestError(400, f"stream_options supports only include_usage (true or false); got "
                                   f"{req.stream_options}", param="stream_options")
        if req.stream and len(prompts) > 1:
            raise RequestError(400, "stream=true takes one prompt, not a list", param="prompt")
        if req.n != 1:
            raise RequestError(400, "only n=1 is supported", param="n")
        if req.model not in (None, model_name):
            raise RequestError(404, f"model {req.model!r} is not served here; this server serves {model_name!r}",
                               "not_found_error", param="model", code="model_not_found")
        if req.max_tokens > max_tokens_limit:
            raise RequestError(400, f"max_tokens {req.max_tokens} exceeds this server's limit {max_tokens_limit}",
                               param="max_tokens")
        for ids in prompts:
            if len(ids) > max_prompt_tokens:
                raise RequestError(400, f"prompt has {len(ids)} tokens; this server's limit is {max_prompt_tokens}",
                                   param="prompt", code="context_length_exceeded")

    def submit(req: _Request, prompts: list[list[int]]) -> list[Stream]:
        check(req, prompts)
        if backend.in_flight() + len(prompts) > capacity:
            raise RequestError(429, f"the server is at capacity ({backend.max_batch_size} running, {max_queue} "
                               f"waiting): retry later", "rate_limit_error", code="rate_limit_exceeded",
                               headers={"Retry-After": "1"})
        prompt_tokens.inc(sum(map(len, prompts)))
        return [backend.submit(ids, req.max_tokens, req.temperature, req.top_p, req.ignore_eos) for ids in prompts]

    async def run(req: _Request, prompts: list[list[int]]) -> list[Generated]:
        streams = submit(req, prompts)
        try:
            return list(await asyncio.gather(*(s.result() for s in streams)))
        except asyncio.CancelledError:
            for s in streams:
                s.cancel()
            raise
        except Exception as e:  # the model failed on this request: 500, counted, and the server goes on
            raise RequestError(500, f"generation failed: {e.__class__.__name__}: {e}", "server_error") from e

    def event(data: dict | str) -> str:
        return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"

    def streamed(req: _Request, prompts: list[list[int]], chunk) -> StreamingResponse:
        """Server-sent events in OpenAI's chunk format: `chunk(text, finish_reason)` makes each event's body; text
        goes out as soon as its tokens decode to whole characters; then the usage (when asked) and [DONE]."""
        stream = submit(req, prompts)[0]

        async def events():
            sent = ""
            try:
                first = chunk(None, None)
                if first is not None:
                    yield event(first)
                async for _ in stream:
                    text = backend.decode(stream.ids)
                    if text.endswith("\ufffd") or not text.startswith(sent):
                        continue  # a character split across tokens: wait for the rest
                    if len(text) > len(sent):
                        yield event(chunk(text[len(sent):], None))
                        sent = text
                text = backend.decode(stream.ids)
                yield event(chunk(text[len(sent):] if text.startswith(sent) else "", stream.finish_reason))
                if (req.stream_options or {}).get("include_usage"):
                    yield event({**chunk("", None), "choices": [],
                                 "usage": usage(prompts, [Generated(stream.ids, stream.finish_reason)])})
            except Exception as e:  # the model failed mid-stream: say so in the stream, then end it
                yield event(RequestError(500, f"generation failed: {e.__class__.__name__}: {e}",
                                         "server_error").body)
            finally:
                stream.cancel()  # the client went away mid-stream (or nothing: it has ended)
            yield event("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def usage(prompts, outs) -> dict:
        p, c = sum(map(len, prompts)), sum(len(o.ids) for o in outs)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    async def parse(request: Request, schema: type[_Request]) -> _Request:
        """The JSON body (whatever the Content-Type says) validated against `schema`; 400 with every problem."""
        import json

        from pydantic import ValidationError

        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body_bytes:
            raise RequestError(413, f"request body of {int(declared):,} bytes exceeds this server's limit of "
                               f"{max_body_bytes:,}", code="body_too_large")
        raw = bytearray()
        async for chunk in request.stream():  # a body without a length is cut off at the limit, not read whole
            raw += chunk
            if len(raw) > max_body_bytes:
                raise RequestError(413, f"request body exceeds this server's limit of {max_body_bytes:,} bytes",
                                   code="body_too_large")
        try:
            body = json.loads(bytes(raw))
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError(400, f"invalid JSON body: {e}") from None
        except RecursionError:
            raise RequestError(400, "invalid JSON body: nested too deeply") from None
        if not isinstance(body, dict):
            raise RequestError(400, f"the body must be a JSON object, not {type(body).__name__}")
        try:
            return schema.model_validate(body)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors())
            raise RequestError(400, f"invalid request: {problems}", param=str(e.errors()[0]["loc"][0])) from None

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await parse(request, CompletionRequest)
        texts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        prompts = [backend.encode(t) for t in texts]
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": model_name}
        if req.stream:
            return streamed(req, prompts, lambda text, finish: None if text is None else {
                **head, "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]})
        outs = await run(req, prompts)
        return {**head, "usage": usage(prompts, outs),
                "choices": [{"index": i, "text": backend.decode(o.ids), "finish_reason": o.finish_reason,
                             "logprobs": None} for i, o in enumerate(outs)]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = await parse(request, ChatRequest)
        prompts = [backend.encode_chat([m.model_dump() for m in req.messages])]
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_name}
        if req.stream:
            def chunk(text, finish):
                delta = {"role": "assistant", "content": ""} if text is None else \
                    {"content": text} if text or finish is None else {}
                return {**head, "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
            return streamed(req, prompts, chunk)
        outs = await run(req, prompts)
        return {**head, "object": "chat.completion", "usage": usage(prompts, outs),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": backend.decode(outs[0].ids)},
                             "finish_reason": outs[0].finish_reason}]}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "llm-milestones"}]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "quantization": getattr(backend, "quantization", "none")}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


# --- the process -----------------------------------------------------------------------------------------
def transformers_backend(model_dir: str, batching: str = "continuous", quantization: str = "none",
                         dtype: str = "float32", max_batch_size: int = 8, batch_wait_ms: float = 10.0,
                         max_prompt_tokens: int = 512, max_tokens_limit: int = 256):
    if batching == "static":
        return StaticBatching(model_dir, quantization, dtype, max_batch_size, batch_wait_ms)
    return ContinuousBatching(model_dir, quantization, dtype, max_batch_size, max_prompt_tokens, max_tokens_limit)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, taken before the model loads, so a busy port fails fast and clearly."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are fine, listeners are not
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ServeError(f"port {port} on {host} is already in use: stop what listens there or pass another "
                             f"--port") from None
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


def vllm_command(model: str, host: str, port: int, name: str, quantization: str, dtype: str, api_key: str | None,
                 max_batch_size: int, max_prompt_tokens: int, max_tokens_limit: int) -> list[str]:
    """vLLM's OpenAI server with this server's settings (its context bounds prompt + max_tokens)."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", host,
           "--port", str(port), "--served-model-name", name, "--dtype", dtype, "--max-num-seqs", str(max_batch_size),
           "--max-model-len", str(max_prompt_tokens + max_tokens_limit)]
    if quantization != "none":
        cmd += ["--quantization", quantization]
    if api_key:
        cmd += ["--api-key", api_key]
    return cmd


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, backend: str = "transformers",
          quantization: str = "none", dtype: str = "float32", api_key: str | None = None, max_batch_size: int = 8,
          batch_wait_ms: float = 10.0, max_prompt_tokens: int = 512, max_tokens_limit: int = 256,
          name: str | None = None, max_body_bytes: int = MAX_BODY_BYTES, batching: str = "continuous",
          max_queue: int = 64) -> None:
    from impl.core.hf import resolve_model

    model_dir = resolve_model(model)
    name = name or model
    sock = bind(host, port)
    if backend == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            sock.close()
            raise ServeError("backend vllm needs vLLM (GPU machines: pip install -e '.[gpu]')")
        sock.close()  # vLLM binds the port itself
        cmd = vllm_command(model_dir, host, port, name, quantization, dtype, api_key, max_batch_size,
                           max_prompt_tokens, max_tokens_limit)
        print("exec:", " ".join(c if c != api_key else "***" for c in cmd), flush=True)
        os.execv(cmd[0], cmd)
    if backend != "transformers":
        raise ServeError(f"unknown backend {backend!r}: transformers | vllm")
    if batching not in ("continuous", "static"):
        raise ServeError(f"unknown batching {batching!r}: continuous | static")
    import uvicorn

    engine = transformers_backend(model_dir, batching, quantization, dtype, max_batch_size, batch_wait_ms,
                                  max_prompt_tokens, max_tokens_limit)
    app = create_app(engine, name, api_key, max_prompt_tokens, max_tokens_limit, max_body_bytes, max_queue)
    print(f"serving {name} ({quantization}, {batching} batching, up to {max_batch_size} at once, {max_queue} "
          f"waiting) on http://{host}:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    engine.close()
