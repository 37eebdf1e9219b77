"""The load test's user: OpenAI-style requests back to back, prompts in turn from a JSON file.

    W09_PROMPTS=prompts.json W09_MAX_TOKENS=16 W09_IGNORE_EOS=1 W09_ENDPOINT=/v1/chat/completions W09_API_KEY=... \
        locust -f impl/w09_serve/locustfile.py --headless -u 8 -r 8 -t 10s --host http://127.0.0.1:8000 --csv out

A request counts as failed unless it answers 200 with a JSON body holding one choice with text. With
W09_REQUEST_LOG set, every finished request is appended there (start time, latency, ok): the suite computes its
numbers from that log, over successful requests and the stated window, instead of locust's aggregate (which
averages failed requests in and divides by the time to the last request).
"""
import itertools
import json
import os
import time

from locust import HttpUser, constant, events, task

PROMPTS = json.loads(open(os.environ["W09_PROMPTS"]).read())
MAX_TOKENS = int(os.environ.get("W09_MAX_TOKENS", "16"))
ENDPOINT = os.environ.get("W09_ENDPOINT", "/v1/chat/completions")
KEY = os.environ.get("W09_API_KEY")
MODEL = os.environ.get("W09_MODEL")  # the served model's name (vLLM's server routes by it)
IGNORE_EOS = os.environ.get("W09_IGNORE_EOS") == "1"  # every answer exactly MAX_TOKENS long
_next = itertools.cycle(range(len(PROMPTS)))  # shared by the users of this process: every prompt in turn
_log = open(os.environ["W09_REQUEST_LOG"], "a", buffering=1) if os.environ.get("W09_REQUEST_LOG") else None


@events.init.add_listener
def _fresh_clock(environment, **kwargs):
    """gevent's loop keeps the time it last looked at; after slow imports a stale clock makes `-t` fire early (a
    3 s run stopped after 17 ms where bytecode was not cached). Locust sets its run-time timer after this event."""
    import gevent

    gevent.get_hub().loop.update_now()


def _record(start: float, ok: bool, why: str = "") -> None:
    if _log:
        _log.write(json.dumps({"start": start, "latency_ms": (time.time() - start) * 1000, "ok": ok, "why": why}) + "\n")


class Client(HttpUser):
    wait_time = constant(0)  # closed loop: each user sends its next request when the last one returns

    @task
    def complete(self):
        prompt = PROMPTS[next(_next)]
        body = {"max_tokens": MAX_TOKENS, "temperature": 0}
        if MODEL:
            body["model"] = MODEL
        if IGNORE_EOS:
            body["ignore_eos"] = True
        if ENDPOINT.endswith("/chat/completions"):
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        headers = {"Authorization": f"Bearer {KEY}"} if KEY else {}
        start = time.time()
        with self.client.post(ENDPOINT, json=body, headers=headers, name=ENDPOINT, catch_response=True) as r:
            why = ""
            if r.status_code != 200:
                why = f"HTTP {r.status_code}: {r.text[:200]}"
            else:
                try:
                    choice = r.json()["choices"][0]
                    text = choice["message"]["content"] if "message" in choice else choice["text"]
                    if not isinstance(text, str):
                        why = "choice without text"
                except (ValueError, KeyError, IndexError, TypeError):
                    why = f"not an OpenAI completion: {r.text[:200]}"
            _record(start, not why, why)
            if why:
                r.failure(why)
            else:
                r.success()
