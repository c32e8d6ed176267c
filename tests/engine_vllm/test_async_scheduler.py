"""`rollout.schedule: trajectory` on vLLM's step loop: same trajectories as the batch schedule.

One engine per module, with the scripted-tokens logits processor installed, so that multi-turn tool
trajectories of known shape run through the real engine (the random tiny model never calls a tool).
"""

from __future__ import annotations

import functools
import importlib.util

import pytest
import torch

spec = importlib.util.find_spec("vllm")
if spec is None or spec.origin is None:
    pytest.skip("vLLM is not installed (bash scripts/setup_vllm.sh)", allow_module_level=True)

from wait_tools import wait, wait_call  # noqa: E402
from zoom_fixtures import ZoomEnv, zoom_call  # noqa: E402

from agent_grpo.models.chat import ChatFormat  # noqa: E402
from agent_grpo.models.tiny import build_tiny_model  # noqa: E402
from agent_grpo.rollout import RolloutConfig, RolloutDriver, SamplingParams  # noqa: E402
from agent_grpo.rollout.batch import assemble_batch  # noqa: E402
from agent_grpo.rollout.logprobs import forward_logprobs  # noqa: E402
from agent_grpo.rollout.scheduler import step_engine_for  # noqa: E402
from agent_grpo.rollout.vllm_async import VLLMStepEngine, scripted_tokens_processor  # noqa: E402
from agent_grpo.rollout.vllm_engine import VLLMEngine, import_vllm  # noqa: E402
from agent_grpo.tools import load_tools  # noqa: E402
from agent_grpo.trajectory import Termination  # noqa: E402

torch.set_num_threads(1)
ANSWER = "<think>easy</think><answer>3</answer>"
PLANS = [
    [ANSWER],
    [zoom_call([0, 0, 224, 224]), "<think>" + "it is small " * 6 + "</think><answer>3</answer>"],
    [wait_call(0.2), zoom_call([56, 56, 300, 300]), zoom_call([10, 10, 100, 100], image=1), ANSWER],
    [zoom_call([100, 100, 400, 400]), wait_call(0.05), ANSWER],
]


class WaitZoomEnv(ZoomEnv):
    tool_names = ("zoom_in", "wait")


@pytest.fixture(scope="module")
def setup():
    model, processor = build_tiny_model(size="S", seed=0)
    chat = ChatFormat(processor)
    vllm = import_vllm()
    original = vllm.LLM
    vllm.LLM = functools.partial(original, logits_processors=[scripted_tokens_processor()])
    try:
        engine = VLLMEngine(model, processor, chat, max_images=4, max_model_len=1024)
    finally:
        vllm.LLM = original
    yield model, chat, engine
    engine.close()


@pytest.fixture
def env():
    tools = load_tools().subset(["zoom_in"])
    tools.register(wait)
    e = WaitZoomEnv(tools=tools)
    yield e
    e.shutdown()


def scripted(chat):
    def extra_args(request):
        plan = PLANS[int(request.key.rsplit("-", 1)[1]) % len(PLANS)]
        return {"scripted_ids": chat.tokenizer.encode(plan[min(request.turn, len(plan) - 1)], add_special_tokens=False)}
    return extra_args


def fingerprint(trajs):
    return [
        (t.id, [(s.kind, s.turn, s.token_ids, s.logprobs) for s in t.segments],
         [(i.sha256, i.observation, i.parent, i.box) for i in t.images], t.termination, t.reward)
        for t in trajs
    ]


def rollout(env, chat, engine, schedule, sampling, group_size=4, n_tasks=2):
    config = RolloutConfig(group_size=group_size, max_total_tokens=1024, schedule=schedule, sampling=sampling)
    driver = RolloutDriver(env, engine, chat, config)
    return driver.rollout(env.load_tasks(n=n_tasks), step=2, seed=9), driver


def test_scripted_tool_trajectories_equal_in_both_schedules_token_for_token(setup, env):
    _, chat, engine = setup
    stepper = VLLMStepEngine(engine, extra_args=scripted(chat))
    sampling = SamplingParams(greedy=True, max_new_tokens=64)
    batch, _ = rollout(env, chat, stepper, "batch", sampling)
    ours, driver = rollout(env, chat, stepper, "trajectory", sampling)
    assert fingerprint(ours) == fingerprint(batch)
    assert {len(t.images) for t in ours} == {1, 2, 3}
    assert all(t.termination == Termination.ANSWERED for t in ours)
    assert driver.schedule_stats.engine_steps > 0
    model = setup[0]
    for t in ours:  # the step loop's logprobs are the trainer's, tool images included (up to 3 per trajectory)
        batch = assemble_batch([t], chat, env.budget)
        with torch.no_grad():
            lp, _ = forward_logprobs(model, batch)
        theirs = torch.tensor([x for s in t.segments if s.kind == "sampled" for x in s.logprobs])
        assert (theirs - lp[0][batch.loss_mask[0].bool()]).abs().max() < 1e-4, t.id


@pytest.mark.parametrize("sampling", [SamplingParams(greedy=True, max_new_tokens=24),
                                      SamplingParams(max_new_tokens=24, top_k=50, seed=1)], ids=["greedy", "sampled"])
def test_free_rollouts_equal_in_both_schedules(setup, env, sampling):
    _, chat, engine = setup
    assert isinstance(step_engine_for(engine), VLLMStepEngine)  # the trajectory schedule decodes continuously
    batch, _ = rollout(env, chat, engine, "batch", sampling)  # LLM.generate, one call per turn
    ours, _ = rollout(env, chat, engine, "trajectory", sampling)
    assert fingerprint(ours) == fingerprint(batch)
    if not sampling.greedy:  # a real sample: the group's trajectories differ, and still match one for one
        assert len({tuple(s.token_ids) for t in ours for s in t.segments if s.kind == "sampled"}) > 1
