"""A tiny OpenAI-compatible chat-completions server for tests, run as a real process on 127.0.0.1.

    python tests/api_stub_server.py      # prints "PORT <n>" once it listens

It speaks the real wire format (`POST /v1/chat/completions`, answer in `choices[0].message.content`)
and behaves as the last `POST /control` said (JSON, every field optional; counters reset):

    mode        judge      reply "Judgement: 1" if the prompt's `Answer:` line equals its `Reference:` line
                           (case and spaces ignored), else "Judgement: 0"
                script     reply `replies[n]`, n = number of assistant messages in the request
                nonsense   a valid completion whose text is no verdict
                garbage    HTTP 200 with a body that is not JSON
                no_choices HTTP 200, JSON without `choices`
                die        exit the process at once, without answering
    delay_s     sleep this long before answering (a time-out test)
    fail_first  answer HTTP 500 to the first n requests, then behave as `mode`
    status      the status of those failures (default 500; 429 and 400 are useful too)

`GET /stats` gives `{"requests": n, "bodies": [...], "max_in_flight": m}`: what reached the completions
endpoint, and the most requests it was answering at once.
`StubServer` starts and stops one from a test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_STATE: dict = {}
_LOCK = threading.Lock()


def _reset(control: dict) -> None:
    with _LOCK:
        _STATE.clear()
        _STATE.update(mode="judge", delay_s=0.0, fail_first=0, status=500, replies=[], requests=0, bodies=[],
                      in_flight=0, max_in_flight=0)
        _STATE.update(control)


def _line(text: str, label: str) -> str | None:
    m = re.search(rf"^{label}:\s*(.*)$", text, flags=re.MULTILINE)
    return m.group(1) if m else None


def _text_of(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or [] if p.get("type") == "text")


def _judge_reply(body: dict) -> str:
    prompt = _text_of(body["messages"][-1])
    answer, reference = _line(prompt, "Answer"), _line(prompt, "Reference")
    same = answer is not None and reference is not None and answer.strip().lower() == reference.strip().lower()
    return f"The two answers {'agree' if same else 'differ'}.\nJudgement: {int(same)}"


def _completion(text: str, model: str) -> dict:
    return {
        "id": "stub-1", "object": "chat.completion", "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
    }


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, payload: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        if self.path == "/stats":
            with _LOCK:
                stats = {k: _STATE[k] for k in ("requests", "bodies", "max_in_flight")}
                self._send(200, json.dumps(stats).encode())
        else:
            self._send(404, b'{"error": "not found"}')

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/control":
            _reset(json.loads(raw or b"{}"))
            self._send(200, b"{}")
            return
        if self.path != "/v1/chat/completions":
            self._send(404, b'{"error": "not found"}')
            return
        body = json.loads(raw)
        with _LOCK:
            _STATE["requests"] += 1
            n = _STATE["requests"]
            _STATE["bodies"].append(body)
            _STATE["in_flight"] += 1
            _STATE["max_in_flight"] = max(_STATE["max_in_flight"], _STATE["in_flight"])
            state = dict(_STATE)
        if state["mode"] == "die":
            os._exit(0)
        try:
            self._answer(body, n, state)
        finally:
            with _LOCK:
                _STATE["in_flight"] -= 1

    def _answer(self, body: dict, n: int, state: dict) -> None:
        time.sleep(state["delay_s"])
        if n <= state["fail_first"]:
            self._send(state["status"], b'{"error": {"message": "stub failure"}}')
            return
        mode = state["mode"]
        if mode == "garbage":
            self._send(200, b"<html>502 Bad Gateway</html>", "text/html")
            return
        if mode == "no_choices":
            self._send(200, b'{"id": "x", "object": "chat.completion"}')
            return
        if mode == "judge":
            text = _judge_reply(body)
        elif mode == "nonsense":
            text = "I like turtles."
        elif mode == "script":
            turn = sum(1 for m in body["messages"] if m["role"] == "assistant")
            replies = state["replies"]
            text = replies[min(turn, len(replies) - 1)]
        else:
            self._send(400, json.dumps({"error": f"unknown mode {mode}"}).encode())
            return
        self._send(200, json.dumps(_completion(text, body.get("model", "stub"))).encode())


def main() -> None:
    _reset({})
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


class StubServer:
    """The stub in a subprocess: `start()`, `configure(mode=...)`, `stats()`, `stop()`."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> StubServer:
        self.proc = subprocess.Popen(
            [sys.executable, __file__], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"stub server did not start: {line!r} {self.proc.stderr.read()!r}")
        self.port = int(line.split()[1])
        return self

    def _post(self, path: str, payload: dict) -> dict:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def configure(self, **control) -> None:
        self._post("/control", control)

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=10) as r:
            return json.loads(r.read())

    @property
    def requests(self) -> int:
        return self.stats()["requests"]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


if __name__ == "__main__":
    main()
