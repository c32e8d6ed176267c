"""`ServerEngine` when the server misbehaves: timeouts, lost connections, errors, another model.

The server here is a small stand-in on 127.0.0.1 (the standard library's HTTP server in a thread) that
speaks the wire protocol and fails on cue, so each fault is exact and fast; no vLLM needed. The real
server dying in the middle of a training step is tests/engine_vllm/test_server_recipe.py.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from server_fixtures import free_port

from agent_grpo.models.chat import ChatFormat
from agent_grpo.models.tiny import build_tiny_model
from agent_grpo.rollout.engine import GenRequest, GenResult, SamplingParams
from agent_grpo.rollout.server_engine import EngineServerError, ServerEngine, ServerSettings
from agent_grpo.rollout.server_protocol import GenerateCall, GenerateReply, ServerInfo, SyncReply
from agent_grpo.train.config import load_config


@pytest.fixture(scope="module")
def chat():
    return ChatFormat(build_tiny_model(size="S", seed=0)[1])


class FakeServer:
    """Answers /info like serve-engine; `/generate` and `/sync` follow `script`, one entry per call:
    "ok", "slow" (answers after 2 s), "close" (drops the connection unanswered), or an HTTP status."""

    def __init__(self, chat, script=(), stops=None):
        self.calls: list[str] = []
        self.script = list(script)
        self.info = ServerInfo(model="tiny", vocab_size=len(chat.tokenizer), image_token_id=chat.image_token_id,
                               stop_strings=list(stops or chat.stop_strings), max_model_len=1024, max_images=4,
                               weights_version=None)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send(200, fake.info.model_dump_json())

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                fake.calls.append(self.path)
                what = fake.script.pop(0) if fake.script else "ok"
                if what == "close":
                    self.close_connection = True
                    self.connection.close()  # as a server that died mid-request
                    return
                if what == "slow":
                    time.sleep(2.0)
                if isinstance(what, int):
                    self._send(what, json.dumps({"detail": f"scripted {what}"}))
                elif self.path == "/sync":
                    self._send(200, SyncReply(weights_version=json.loads(body)["version"], seconds=0).model_dump_json())
                else:
                    n = len(GenerateCall.model_validate_json(body).requests)
                    results = [GenResult(token_ids=[7], logprobs=[-0.5], finish_reason="length")] * n
                    self._send(200, GenerateReply(weights_version=None, results=results).model_dump_json())

            def _send(self, status, text):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(text)))
                    self.end_headers()
                    self.wfile.write(text.encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake(chat, request):
    server = FakeServer(chat, **getattr(request, "param", {}))
    yield server
    server.close()


def client(chat, url, tmp_path, **settings) -> ServerEngine:
    return ServerEngine(ServerSettings(url=url, retry_wait_s=0.05, **settings), chat, max_images=4, weights_dir=tmp_path)


def one_call(engine):
    return engine.generate([GenRequest(token_ids=[1, 2, 3], key="a")], SamplingParams(max_new_tokens=4))


@pytest.mark.parametrize("fake", [{"script": ["slow", "slow"]}], indirect=True)
def test_a_call_past_timeout_s_is_tried_retries_more_times_then_stops_the_run(chat, fake, tmp_path):
    engine = client(chat, fake.url, tmp_path, timeout_s=0.3, retries=1)
    with pytest.raises(EngineServerError) as err:
        one_call(engine)
    msg = str(err.value)
    assert "failed the generate call 2 time(s)" in msg and "no answer to /generate within 0.3 s" in msg
    assert "rollout.server.retries=1" in msg and "run the same train command to resume" in msg
    assert fake.calls == ["/generate", "/generate"]


@pytest.mark.parametrize("fake", [{"script": ["close", 503, "ok"]}], indirect=True)
def test_a_lost_connection_and_a_server_error_are_retried_and_the_call_then_succeeds(chat, fake, tmp_path):
    engine = client(chat, fake.url, tmp_path, retries=2)
    assert one_call(engine)[0].token_ids == [7]
    assert fake.calls == ["/generate"] * 3


@pytest.mark.parametrize("fake", [{"script": ["close"]}], indirect=True)
def test_with_no_retries_a_server_dying_mid_call_stops_at_once(chat, fake, tmp_path):
    engine = client(chat, fake.url, tmp_path, retries=0)
    with pytest.raises(EngineServerError, match=r"failed the generate call 1 time\(s\).*RemoteDisconnected"):
        one_call(engine)


@pytest.mark.parametrize("fake", [{"script": [400]}], indirect=True)
def test_a_refused_call_is_not_retried(chat, fake, tmp_path):
    engine = client(chat, fake.url, tmp_path, retries=3)
    with pytest.raises(EngineServerError, match=r"refused /generate \(400\): scripted 400"):
        one_call(engine)
    assert fake.calls == ["/generate"]


def test_a_server_without_the_pushed_weights_gets_them_again_before_the_call_is_repeated(chat, fake, tmp_path):
    engine = client(chat, fake.url, tmp_path, retries=0)
    engine.update_weights({"w": torch.ones(2)})
    fake.script = [409]
    assert one_call(engine)[0].token_ids == [7]
    assert fake.calls == ["/sync", "/generate", "/sync", "/generate"]


def test_a_process_that_does_not_push_waits_for_the_pushing_process(chat, fake, tmp_path):
    """DDP: only the main process pushes; another one, refused (409) before that push lands, waits for it."""
    engine = ServerEngine(ServerSettings(url=fake.url, retries=0, timeout_s=10), chat, max_images=4,
                          run_id="run", pushes=False)
    engine.update_weights({"w": torch.ones(2)})  # the main process pushes these
    assert engine.version == "run-1" and fake.calls == []
    fake.script = [409]
    threading.Timer(0.5, lambda: setattr(fake, "info", fake.info.model_copy(update={"weights_version": "run-1"}))).start()
    assert one_call(engine)[0].token_ids == [7]
    assert fake.calls == ["/generate", "/generate"]


def test_no_server_at_the_url_is_a_clear_error_at_setup(chat, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(EngineServerError, match=r"no engine server answers at .*agent-grpo serve-engine CONFIG"):
        client(chat, url, tmp_path, startup_timeout_s=0.2)


@pytest.mark.parametrize("fake", [{"stops": ["</answer>"]}], indirect=True)
def test_a_server_with_another_chat_format_is_refused(chat, fake, tmp_path):
    with pytest.raises(EngineServerError, match="serves another tokenizer or chat format"):
        client(chat, fake.url, tmp_path)


def test_config_checks_the_server_section():
    cfg = load_config(None, ["rollout.engine=vllm-server", "rollout.server.url=http://10.0.0.2:8000",
                             "rollout.server.retries=0"])
    assert (cfg.rollout.server.host, cfg.rollout.server.port, cfg.rollout.server.retries) == ("10.0.0.2", 8000, 0)
    for bad, said in [("rollout.server.url=10.0.0.2:8000", "must look like http://HOST:PORT"),
                      ("rollout.server.url=http://h:8000/v1", "must look like http://HOST:PORT"),
                      ("rollout.server.timeout_s=0", "rollout.server.timeout_s"),
                      ("rollout.server.retries=-1", "rollout.server.retries"),
                      ("rollout.server.retry=1", "did you mean rollout.server.retries"),
                      ("rollout.vllm.sleep_during_update=true", "the engine server has its own GPUs")]:
        with pytest.raises(ValueError, match=said):
            load_config(None, ["rollout.engine=vllm-server", bad])


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_serve_engine_without_vllm_names_the_install_and_that_the_trainer_needs_none():
    from agent_grpo.cli.serve import build_service
    from agent_grpo.errors import ConfigError

    with pytest.raises(ConfigError, match=r"serve-engine needs vLLM.*scripts/setup_vllm.sh.*the trainer itself needs "
                                          r"no vLLM with rollout.engine: vllm-server"):
        build_service(load_config(None, ["rollout.server.max_images=4"]))
