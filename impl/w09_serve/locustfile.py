"""The load test's user: OpenAI-style requests back to back, taken in turn from a JSON schedule of
{"prompt", "max_tokens"} entries (the suite draws it, seeded: impl/w09_serve/load.py).

    W09_SCHEDULE=schedule.json W09_IGNORE_EOS=0 W09_STREAM=1 W09_ENDPOINT=/v1/chat/completions W09_API_KEY=... \
        locust -f impl/w09_serve/locustfile.py --headless -u 8 -r 8 -t 10s --host http://127.0.0.1:8000 --csv out

A request counts as failed unless it answers 200 with one choice with text (streamed: server-sent events in
OpenAI's chunk format ending with [DONE], no error event). With W09_REQUEST_LOG set, every finished request is
appended there (start time, latency, ok; streamed: time to first token, the time from the first token to the
last, and the usage's token counts), and every request sent when it is sent (so one never finished is seen): the suite computes its numbers from that log, over successful requests and
the stated window, instead of locust's aggregate (which averages failed requests in and divides by the time to
the last request).
"""
import itertools
import json
import os
import time

from locust import HttpUser, constant, events, task

SCHEDULE = json.loads(open(os.environ["W09_SCHEDULE"]).read())
ENDPOINT = os.environ.get("W09_ENDPOINT", "/v1/chat/completions")
KEY = os.environ.get("W09_API_KEY")
MODEL = os.environ.get("W09_MODEL")  # the served model's name (vLLM's server routes by it)
IGNORE_EOS = os.environ.get("W09_IGNORE_EOS") == "1"  # every answer exactly max_tokens long
STREAM = os.environ.get("W09_STREAM") == "1"
_next = itertools.cycle(range(len(SCHEDULE)))  # shared by the users of this process: every entry in turn
_log = open(os.environ["W09_REQUEST_LOG"], "a", buffering=1) if os.environ.get("W09_REQUEST_LOG") else None


@events.init.add_listener
def _fresh_clock(environment, **kwargs):
    """gevent's loop keeps the time it last looked at; after slow imports a stale clock makes `-t` fire early (a
    3 s run stopped after 17 ms where bytecode was not cached). Locust sets its run-time timer after this event."""
    import gevent

    gevent.get_hub().loop.update_now()


def _begin(start: float) -> None:
    """A request sent: a request sent but never recorded as finished did not finish before locust stopped."""
    if _log:
        _log.write(json.dumps({"sent": start}) + "\n")


def _record(start: float, ok: bool, why: str = "", **streamed) -> None:
    if _log:
        _log.write(json.dumps({"start": start, "latency_ms": (time.time() - start) * 1000, "ok": ok, "why": why,
                               **streamed}) + "\n")


def _text(choice: dict) -> str | None:
    """The text of a choice, a chat message or a streamed chunk's delta (None: there is none)."""
    if "message" in choice:
        return choice["message"].get("content")
    if "delta" in choice:
        return choice["delta"].get("content")
    return choice.get("text")


def _read_stream(r, start: float) -> tuple[str, dict]:
    """(why it failed or "", what the log records) of a server-sent-event response: the first and last chunk
    carrying text, their count and the usage chunk's token counts."""
    first = last = None
    chunks, usage, done = 0, {}, False
    for line in r.iter_lines(decode_unicode=True):
        if not line or not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            done = True
            break
        event = json.loads(data)
        if "error" in event:
            return f"error event: {event['error'].get('message', '')[:200]}", {}
        usage = event.get("usage") or usage
        if any(_text(c) for c in event.get("choices", [])):
            last = time.time()
            first = first or last
            chunks += 1
    if not done:
        return "the stream ended without [DONE]", {}
    if first is None:
        return "no text in the stream", {}
    return "", {"ttft_ms": (first - start) * 1000, "decode_ms": (last - first) * 1000, "text_chunks": chunks,
                "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens")}


class Client(HttpUser):
    wait_time = constant(0)  # closed loop: each user sends its next request when the last one returns

    @task
    def complete(self):
        entry = SCHEDULE[next(_next)]
        body = {"max_tokens": entry["max_tokens"], "temperature": 0}
        if MODEL:
            body["model"] = MODEL
        if IGNORE_EOS:
            body["ignore_eos"] = True
        if STREAM:
            body.update(stream=True, stream_options={"include_usage": True})
        if ENDPOINT.endswith("/chat/completions"):
            body["messages"] = [{"role": "user", "content": entry["prompt"]}]
        else:
            body["prompt"] = entry["prompt"]
        headers = {"Authorization": f"Bearer {KEY}"} if KEY else {}
        start = time.time()
        _begin(start)
        with self.client.post(ENDPOINT, json=body, headers=headers, name=ENDPOINT, catch_response=True,
                              stream=STREAM) as r:
            why, streamed = "", {}
            try:
                if r.status_code != 200:
                    why = f"HTTP {r.status_code}: {r.text[:200]}"
                elif STREAM:
                    why, streamed = _read_stream(r, start)
                elif not isinstance(_text(r.json()["choices"][0]), str):
                    why = "choice without text"
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
                why = f"not an OpenAI completion: {e.__class__.__name__}: {e}"[:300]
            except OSError as e:  # the connection broke mid-stream
                why = f"{e.__class__.__name__}: {e}"[:300]
            _record(start, not why, why, **streamed)
            if why:
                r.failure(why)
            else:
                r.success()
