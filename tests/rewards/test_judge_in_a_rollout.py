"""A judge that times out during a real rollout (driver + scripted engine + tiny model's chat format): the
trajectories come back scored, the failure recorded on each and in the step's metrics; the run goes on."""

from __future__ import annotations

import pytest
import torch
from api_stub_server import StubServer
from zoom_fixtures import ZoomEnv, zoom_call

from agent_grpo.models.chat import ChatFormat
from agent_grpo.models.tiny import build_tiny_model
from agent_grpo.rewards import deepeyes_rubric
from agent_grpo.rollout import RolloutConfig, RolloutDriver, SamplingParams
from agent_grpo.rollout.scripted import ScriptedEngine
from agent_grpo.tools import load_tools
from agent_grpo.train.metrics import trajectory_metrics

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def server():
    s = StubServer().start()
    yield s
    s.stop()


@pytest.mark.slow  # tool worker processes and the tiny processor
def test_a_timed_out_judge_is_recorded_and_the_rollout_goes_on(server):
    _, processor = build_tiny_model(size="S", seed=0)
    chat = ChatFormat(processor)
    judge = dict(base_url=server.base_url, model="judge", timeout_s=0.3, max_retries=0)
    env = ZoomEnv(tools=load_tools().subset(["zoom_in"]), rubric=deepeyes_rubric(judge=judge))
    script = [zoom_call([0, 0, 224, 224]), "<think>it is</think><answer>0</answer><|im_end|>"]
    engine = ScriptedEngine(lambda r: script[min(r.turn, 1)], chat)
    config = RolloutConfig(group_size=2, max_total_tokens=1024, sampling=SamplingParams(max_new_tokens=96))
    driver = RolloutDriver(env, engine, chat, config)
    try:
        server.configure(mode="judge", delay_s=1.0)
        slow = driver.rollout(list(env.load_tasks("train", n=1)), step=0)
        server.configure(mode="judge")
        fine = driver.rollout(list(env.load_tasks("train", n=1)), step=1)
    finally:
        env.shutdown()
    for t in slow:
        assert t.answer == "0" and t.rewards["accuracy"] == 0.0 and t.rewards["tool_bonus"] == 0.0
        assert "no answer within 0.3 s" in t.reward_errors["accuracy"]
    assert trajectory_metrics(slow)["reward_errors"] == 1.0
    for t in fine:  # the same answers, judged once the server answers in time
        assert t.rewards["accuracy"] == 1.0 and t.rewards["tool_bonus"] == 1.0 and not t.reward_errors
    assert trajectory_metrics(fine).get("reward_errors", 0.0) == 0.0  # an event flag: absent when none
