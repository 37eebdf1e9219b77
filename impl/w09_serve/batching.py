"""How the transformers backend runs requests on its model: two ways of batching behind one interface.

    backend = ContinuousBatching(model_dir, max_batch_size=8)      # or StaticBatching(...)
    stream = backend.submit(prompt_ids, max_tokens=64)              # inside the server's event loop
    async for new_ids in stream: ...                                # tokens as they are made
    stream.finish_reason                                            # "stop" (end of sequence) or "length"

- continuous (the server's default): transformers' own continuous-batching manager
  (`model.init_continuous_batching`): a request joins the running batch at the next decode step and leaves it when
  it ends (end of sequence or max_tokens), each sequence with its own pages of a paged KV cache, long prompts
  prefilled in chunks beside the running decodes. Greedy requests go to one manager, sampled ones to a second
  with per-request temperature and top_p (the library decides greedy or sampled per manager, not per request).
- static: one worker thread takes the first waiting request, waits up to `batch_wait_ms` for company (up to
  `max_batch_size`), generates the batch with `model.generate`, left-padded, until its longest answer ends, and
  only then takes the next requests. Kept so the benchmark can measure what continuous batching buys.

Both stream each token as soon as it is made, end a request at its end of sequence (unless `ignore_eos`) or its
max_tokens, and stop computing for a request whose client has gone (`Stream.cancel`).
"""
from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from dataclasses import dataclass

from impl.core.errors import MilestonesError


class BackendError(MilestonesError):
    pass


@dataclass
class Generated:
    ids: list[int]
    finish_reason: str  # "stop" (end of sequence) or "length" (max_tokens reached)


class Stream:
    """One request's tokens, handed from the model's thread to the request's event loop. The model's side calls
    `push`, `end` or `fail` (from any thread); the request's side iterates (`async for new_ids in stream`) or
    awaits `result()`, and calls `cancel()` when its client is gone."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_tokens: int, ignore_eos: bool, on_cancel):
        self.loop, self.max_tokens, self.ignore_eos = loop, max_tokens, ignore_eos
        self.request_id = ""  # the backend's name for it
        self.sampled = False  # on the continuous backend's sampling manager
        self.ids: list[int] = []  # received so far (the loop's side)
        self.finish_reason: str | None = None
        self.cancelled = False
        self.sent = 0  # tokens pushed so far (the model's side)
        self._events: asyncio.Queue = asyncio.Queue()
        self._on_cancel = on_cancel
        self.ended = False  # the model's side has ended it

    # --- the model's side --------------------------------------------------------------------------------
    def _send(self, event) -> None:
        try:
            self.loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass

    def push(self, ids: list[int]) -> None:
        if ids and not self.ended:
            self.sent += len(ids)
            self._send(("tokens", list(ids)))

    def end(self, finish_reason: str) -> None:
        if not self.ended:
            self.ended = True
            self._send(("end", finish_reason))

    def fail(self, error: Exception) -> None:
        if not self.ended:
            self.ended = True
            self._send(("error", error))

    # --- the request's side ------------------------------------------------------------------------------
    async def __aiter__(self):
        while True:
            kind, value = await self._events.get()
            if kind == "tokens":
                self.ids += value
                yield value
            elif kind == "end":
                self.finish_reason = value
                return
            else:
                raise value

    async def result(self) -> Generated:
        async for _ in self:
            pass
        return Generated(self.ids, self.finish_reason)

    def cancel(self) -> None:
        """The client is gone: stop computing this request (a no-op once it has ended)."""
        if not self.ended and not self.cancelled:
            self.cancelled = True
            self._on_cancel(self)


def _until_end(ids: list[int], eos_ids: set[int], ignore_eos: bool) -> tuple[list[int], bool]:
    """The tokens before the first end of sequence, and whether there was one (never, with ignore_eos)."""
    if not ignore_eos:
        for i, t in enumerate(ids):
            if t in eos_ids:
                return ids[:i], True
    return ids, False


class _Backend:
    """What both ways share: the model and tokenizer, and the requests in flight."""

    def __init__(self, model_dir: str, quantization: str = "none", dtype: str = "float32", max_batch_size: int = 8):
        import torch

        from impl.core.hf import load_causal_lm, load_tokenizer

        self.tok = load_tokenizer(model_dir)
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.tok.padding_side = "left"
        torch_dtype = torch.float32 if dtype in ("float32", "auto") else getattr(torch, dtype)
        self.model = load_causal_lm(model_dir, quantization, torch_dtype)
        self.quantization, self.max_batch_size = quantization, max_batch_size
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [self.tok.eos_token_id])
        # the app's counters for /metrics: tokens made (and how many requests were running beside them), batches
        self.on_tokens = lambda made, running: None
        self.on_batch = lambda size: None
        self._lock = threading.Lock()
        self._streams: dict[str, Stream] = {}  # submitted and not yet ended
        self._ids = itertools.count()

    def encode(self, prompt: str) -> list[int]:
        return self.tok(prompt, add_special_tokens=False)["input_ids"]

    def encode_chat(self, messages: list[dict]) -> list[int]:
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def in_flight(self) -> int:
        """Requests submitted whose generation has not ended: running or waiting."""
        with self._lock:
            return len(self._streams)

    def queue_depth(self) -> int:
        return max(0, self.in_flight() - self.running())

    def running(self) -> int:
        raise NotImplementedError

    def _new_stream(self, max_tokens: int, ignore_eos: bool) -> tuple[str, Stream]:
        stream = Stream(asyncio.get_running_loop(), max_tokens, ignore_eos, self._cancel)
        request_id = f"req-{next(self._ids)}"
        stream.request_id = request_id
        with self._lock:
            self._streams[request_id] = stream
        return request_id, stream

    def _forget(self, stream: Stream) -> None:
        with self._lock:
            self._streams.pop(stream.request_id, None)

    def _cancel(self, stream: Stream) -> None:
        raise NotImplementedError


class ContinuousBatching(_Backend):
    """transformers' continuous-batching manager; see the module's docstring."""

    PAGE_SIZE = 64  # tokens per page of the paged KV cache

    def __init__(self, model_dir: str, quantization: str = "none", dtype: str = "float32", max_batch_size: int = 8,
                 max_prompt_tokens: int = 512, max_tokens_limit: int = 256):
        super().__init__(model_dir, quantization, dtype, max_batch_size)
        pages_per_request = -(-(max_prompt_tokens + max_tokens_limit) // self.PAGE_SIZE)
        # enough pages for every running request at its longest, plus one each for the next ones' first tokens:
        # the library otherwise sizes the cache from free GPU memory (on a CPU, minutes of allocating RAM)
        self._cache = {"page_size": self.PAGE_SIZE, "num_blocks": max_batch_size * (pages_per_request + 1),
                       "max_batch_tokens": max_prompt_tokens + max_batch_size,
                       "max_requests_per_batch": max_batch_size}
        self._managers: dict[bool, object] = {}  # sampled? -> its manager, started at its first request
        self._readers: list[threading.Thread] = []
        self._closed = threading.Event()

    def _manager(self, sampled: bool):
        with self._lock:
            if sampled in self._managers:
                return self._managers[sampled]
            from transformers import GenerationConfig
            from transformers.generation.configuration_utils import ContinuousBatchingConfig

            pad = self.tok.pad_token_id
            # a sampling manager needs a temperature and a top_p processor to exist (values other than 1) before
            # each request sets its own
            sampling = {"do_sample": True, "temperature": 0.7, "top_p": 0.9} if sampled else {"do_sample": False}
            config = GenerationConfig(eos_token_id=sorted(self.eos_ids), pad_token_id=pad, max_new_tokens=16,
                                      **sampling)
            cb = ContinuousBatchingConfig(**self._cache, per_request_processors=sampled, allow_block_sharing=False)
            manager = self.model.init_continuous_batching(generation_config=config, continuous_batching_config=cb)
            manager.start()
            self._managers[sampled] = manager
            reader = threading.Thread(target=self._read, args=(manager, sampled), name=f"cb-reader-{sampled}",
                                      daemon=True)
            reader.start()
            self._readers.append(reader)
            return manager

    def submit(self, ids: list[int], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
               ignore_eos: bool = False) -> Stream:
        request_id, stream = self._new_stream(max_tokens, ignore_eos)
        sampled = stream.sampled = temperature > 0
        kwargs = {"temperature": float(temperature), "top_p": float(top_p)} if sampled else {}
        try:
            manager = self._manager(sampled)
            manager.add_request(list(ids), request_id=request_id, max_new_tokens=max_tokens, streaming=True,
                                eos_token_id=-1 if ignore_eos else sorted(self.eos_ids), **kwargs)
        except Exception as e:
            self._forget(stream)
            stream.fail(BackendError(f"the continuous-batching manager refused the request: {e}"))
        return stream

    def running(self) -> int:
        return min(self.in_flight(), self.max_batch_size)  # the manager's scheduler runs at most this many at once

    def _cancel(self, stream: Stream) -> None:
        self._forget(stream)
        for manager in list(self._managers.values()):
            manager.cancel_request(stream.request_id)

    def _read(self, manager, sampled: bool) -> None:
        """Hands each output of `manager` to its request's stream (one reader per manager, its only consumer)."""
        while not self._closed.is_set():
            out = manager.get_result(timeout=0.1)
            if out is None:
                if not manager.is_running() and not self._closed.is_set():  # it died: its requests fail (500)
                    error = manager.background_thread_status.fatal_error
                    with self._lock:
                        lost = [st for st in self._streams.values() if st.sampled == sampled]
                    for st in lost:
                        self._forget(st)
                        st.fail(BackendError(f"the continuous-batching manager stopped: {error!r}"))
                    with self._lock:
                        self._managers.pop(sampled, None)  # the next request starts a new one
                    return
                continue
            with self._lock:
                stream = self._streams.get(out.request_id)
            if stream is None:  # cancelled: the manager may still have made its token for this step
                self.on_tokens(1, min(self.in_flight() + 1, self.max_batch_size))
                continue
            tokens = list(out.generated_tokens)
            new, ended = _until_end(tokens[stream.sent:], self.eos_ids, stream.ignore_eos)
            self.on_tokens(len(tokens) - stream.sent, self.running())  # those waiting beyond the batch are not
            if out.error:
                self._forget(stream)
                stream.fail(BackendError(f"generation failed: {out.error}"))
                continue
            stream.push(new)
            if ended or out.is_finished():
                self._forget(stream)
                stream.end("stop" if ended else "length")

    def close(self) -> None:
        self._closed.set()
        for manager in self._managers.values():
            manager.stop(block=True, timeout=10)
        for reader in self._readers:
            reader.join(timeout=5)


@dataclass
class _Job:
    ids: list[int]
    temperature: float
    top_p: float
    stream: Stream


class StaticBatching(_Backend):
    """Dynamic batches run to their longest answer; see the module's docstring."""

    def __init__(self, model_dir: str, quantization: str = "none", dtype: str = "float32", max_batch_size: int = 8,
                 batch_wait_ms: float = 10.0):
        super().__init__(model_dir, quantization, dtype, max_batch_size)
        self.batch_wait_s = batch_wait_ms / 1000
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._batch = 0  # requests in the batch being generated
        self._worker = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self._worker.start()

    def submit(self, ids: list[int], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
               ignore_eos: bool = False) -> Stream:
        _, stream = self._new_stream(max_tokens, ignore_eos)
        self._queue.put(_Job(list(ids), float(temperature), float(top_p), stream))
        return stream

    def running(self) -> int:
        return self._batch

    def _cancel(self, stream: Stream) -> None:
        self._forget(stream)  # the batch's stopping criterion sees `cancelled` at its next step
        stream.end("cancelled")

    def close(self) -> None:
        self._queue.put(None)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, deadline = [first], time.monotonic() + self.batch_wait_s
            while len(batch) < self.max_batch_size:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)
                    break
                batch.append(job)
            groups: dict[tuple, list[_Job]] = {}  # one generate call per sampling setting
            for job in batch:
                if not job.stream.cancelled:
                    groups.setdefault((job.temperature, job.top_p, job.stream.ignore_eos), []).append(job)
            for jobs in groups.values():
                self._generate(jobs)

    def _generate(self, jobs: list[_Job]) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        backend = self

        class Deliver(StoppingCriteria):
            """Called by `generate` after every step: hands each row's new token to its stream, and marks a row
            done at its end of sequence, its max_tokens or its cancellation; `generate` stops when all are."""

            def __init__(self):
                self.done = [False] * len(jobs)

            def __call__(self, input_ids, scores, **kwargs):
                made = input_ids.shape[1] - width
                running = self.done.count(False)
                for i, job in enumerate(jobs):
                    s = job.stream
                    if self.done[i]:
                        continue
                    if s.cancelled:
                        self.done[i] = True
                        continue
                    token = int(input_ids[i, -1])
                    backend.on_tokens(1, running)
                    kept, ended = _until_end([token], backend.eos_ids, s.ignore_eos)
                    s.push(kept)
                    if ended or made >= s.max_tokens:
                        self.done[i] = True
                        backend._forget(s)
                        s.end("stop" if ended else "length")
                return torch.tensor(self.done, device=input_ids.device)

        try:
            self._batch = len(jobs)
            width = max(len(j.ids) for j in jobs)
            pad = self.tok.pad_token_id
            ids = torch.tensor([[pad] * (width - len(j.ids)) + j.ids for j in jobs], device=self.model.device)
            mask = torch.tensor([[0] * (width - len(j.ids)) + [1] * len(j.ids) for j in jobs], device=self.model.device)
            temperature, top_p, ignore_eos = jobs[0].temperature, jobs[0].top_p, jobs[0].stream.ignore_eos
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else \
                {"do_sample": False}
            longest = max(j.stream.max_tokens for j in jobs)
            if ignore_eos:
                sampling["min_new_tokens"] = longest  # end-of-sequence suppressed until then
            with torch.no_grad():
                self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=longest, pad_token_id=pad,
                                    stopping_criteria=StoppingCriteriaList([Deliver()]), **sampling)
            self.on_batch(len(jobs))
            for job in jobs:  # a row `generate` ended before our criterion saw its last token (its own EOS check)
                if not job.stream.ended:
                    self._forget(job.stream)
                    job.stream.end("stop")
        except Exception as e:  # the requests of this batch fail (500); the worker goes on with the next
            for job in jobs:
                self._forget(job.stream)
                job.stream.fail(e)
        finally:
            self._batch = 0
