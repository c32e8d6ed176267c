"""The chat-API client, the judge and the API rollout against a real `vllm serve` (OpenAI server) on 127.0.0.1.

The tiny Qwen2.5-VL with dummy (random) weights: its text is noise, so this checks the wire format (system
prompt with tools, images as data URLs, tool results with images, usage) and that noise from a real judge is a
recorded reward error or a verdict, never a crash. Slow: the server takes ~1-4 min to start on a busy 2-core CPU.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

spec = importlib.util.find_spec("vllm")
if spec is None or spec.origin is None:
    pytest.skip("vLLM is not installed (bash scripts/setup_vllm.sh)", allow_module_level=True)

from zoom_fixtures import ZoomEnv  # noqa: E402

from agent_grpo.api_client import ChatAPIConfig, ChatClient, user_message  # noqa: E402
from agent_grpo.models.tiny import build_tiny_model  # noqa: E402
from agent_grpo.rewards import Rubric  # noqa: E402
from agent_grpo.rewards.judge import Judge, JudgeConfig, judge_accuracy  # noqa: E402
from agent_grpo.rollout.api_rollout import APIRolloutConfig, api_rollout  # noqa: E402
from agent_grpo.rollout.vllm_engine import _write_model_folder  # noqa: E402
from agent_grpo.tools import load_tools  # noqa: E402
from agent_grpo.trajectory import Task, Trajectory, Turn  # noqa: E402

pytestmark = pytest.mark.slow
START_TIMEOUT_S = 600


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-vlm")
    model, processor = build_tiny_model(size="S", seed=0)
    _write_model_folder(model, processor, Path(folder))
    port = _free_port()
    log = (folder / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder), "--load-format", "dummy",
         "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048", "--host", "127.0.0.1",
         "--port", str(port), "--served-model-name", "tiny", "--limit-mm-per-prompt", '{"image": 4, "video": 0}'],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited ({proc.returncode}): {(folder / 'serve.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve did not start in {START_TIMEOUT_S} s")
            time.sleep(2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_a_completion_with_an_image(vllm_server):
    from PIL import Image

    with ChatClient(ChatAPIConfig(base_url=vllm_server, model="tiny", timeout_s=120)) as client:
        plain = client.complete([user_message("Hello")], max_tokens=4, temperature=0.0)
        with_image = client.complete([user_message("Hello", images=[Image.new("RGB", (112, 112), "red")])],
                                     max_tokens=4, temperature=0.0)
    assert plain.usage.completion_tokens <= 4 and plain.finish_reason in ("stop", "length")
    assert with_image.usage.prompt_tokens - plain.usage.prompt_tokens >= 16  # (112 / 28)^2 image tokens, + markers


def test_api_rollout_runs_multi_turn_episodes(vllm_server):
    env = ZoomEnv(tools=load_tools().subset(["zoom_in"]))
    try:
        with ChatClient(ChatAPIConfig(base_url=vllm_server, model="tiny", timeout_s=120)) as client:
            trajs = api_rollout(env, client, list(env.load_tasks("test", n=2)), APIRolloutConfig(max_tokens=24))
    finally:
        env.shutdown()
    for t in trajs:
        assert "api_error" not in t.metrics and t.turns and t.termination is not None
        assert t.metrics["api_prompt_tokens"] > 16 and "accuracy" in t.rewards


def test_a_real_judge_gives_a_verdict_or_a_recorded_reward_error(vllm_server, tmp_path):
    cfg = JudgeConfig(base_url=vllm_server, model="tiny", timeout_s=120, max_tokens=8, cache_path=tmp_path / "c.jsonl")
    judge = Judge(cfg)
    task = Task(id="q", question="What colour is the bag?", answer="red")
    traj = Trajectory(id="t", task=task, env="test", group_id="q", turns=[Turn(index=0, text="", answer="red")])
    Rubric([judge_accuracy(cfg, judge=judge)]).score([traj])
    assert judge.calls == 1
    if traj.reward_errors:  # noise from random weights: recorded, not cached
        assert "gave no verdict" in traj.reward_errors["accuracy"] and not (tmp_path / "c.jsonl").exists()
    else:
        assert traj.rewards["accuracy"] in (0.0, 1.0) and len((tmp_path / "c.jsonl").read_text().splitlines()) == 1
