"""`rollout.schedule: trajectory`: each trajectory advances on its own, with the same trajectories as `batch`."""

from __future__ import annotations

import threading
import time

import pytest
from wait_tools import wait, wait_call
from zoom_fixtures import ForceScript, ZoomEnv, zoom_call

from agent_grpo.rollout import HFEngine, RolloutConfig, RolloutDriver, SamplingParams, ScriptedEngine
from agent_grpo.rollout.scheduler import BatchedStepEngine, RolloutTimeout
from agent_grpo.tools import load_tools
from agent_grpo.trajectory import Termination, ToolErrorKind

ANSWER = "<think>easy</think><answer>3</answer>"
# Per sample index: 0, 1, 2 or 3 tool turns, zooms of zooms and waits, replies of very different lengths.
PLANS = [
    [ANSWER],
    [zoom_call([0, 0, 224, 224]), "<think>" + "it is small " * 6 + "</think><answer>3</answer>"],
    [wait_call(0.2), zoom_call([56, 56, 300, 300]), zoom_call([10, 10, 100, 100], image=1), ANSWER],
    [zoom_call([100, 100, 400, 400]), wait_call(0.05), ANSWER],
]


class WaitZoomEnv(ZoomEnv):
    tool_names = ("zoom_in", "wait")


def tools():
    found = load_tools().subset(["zoom_in"])
    found.register(wait)
    return found


@pytest.fixture
def env():
    e = WaitZoomEnv(tools=tools())
    yield e
    e.shutdown()


def script(key: str, turn: int) -> str:
    plan = PLANS[int(key.rsplit("-", 1)[1]) % len(PLANS)]
    return plan[min(turn, len(plan) - 1)]


def fingerprint(trajs):
    """Everything a trajectory is made of: tokens by segment, logprobs, images (pixels and provenance), outcome."""
    return [
        (t.id, [(s.kind, s.turn, s.token_ids, s.logprobs) for s in t.segments],
         [(i.sha256, i.observation, i.parent, i.box) for i in t.images], t.termination, t.reward, len(t.turns))
        for t in trajs
    ]


def rollout(env, chat, engine, schedule, sampling=None, group_size=4, n_tasks=2, seed=5, **cfg):
    config = RolloutConfig(group_size=group_size, max_total_tokens=1024, schedule=schedule,
                           sampling=sampling or SamplingParams(max_new_tokens=64), **cfg)
    driver = RolloutDriver(env, engine, chat, config)
    return driver.rollout(env.load_tasks(n=n_tasks), step=3, seed=seed), driver


def test_scripted_continuous_schedule_equals_batch_token_for_token_and_image_for_image(tiny, env):
    chat = tiny[2]
    calls: list[tuple[str, int]] = []

    def policy(r):
        calls.append((r.key, r.turn))
        return script(r.key, r.turn)

    batch, _ = rollout(env, chat, ScriptedEngine(policy, chat), "batch")
    batch_order = list(calls)
    calls.clear()
    ours, driver = rollout(env, chat, BatchedStepEngine(ScriptedEngine(policy, chat)), "trajectory")
    assert fingerprint(ours) == fingerprint(batch)
    assert sorted(calls) == sorted(batch_order)
    # Not a batch in disguise: trajectories that skip the 0.2 s wait ran their later turns before the
    # one that waits got its second turn (in the batch driver every turn waits for the whole batch).
    turns = [turn for _, turn in calls]
    assert turns != sorted(turns)  # the batch driver's order is turn by turn
    assert {len(t.images) for t in ours} == {1, 2, 3}
    assert all(t.termination == Termination.ANSWERED for t in ours)
    stats = driver.schedule_stats
    assert stats.engine_steps > 0 and 0 <= stats.idle_s <= stats.wall_s


def test_tool_calls_of_different_trajectories_overlap(tiny, env):
    chat = tiny[2]
    plan = [wait_call(0.4), ANSWER]
    engine = BatchedStepEngine(ScriptedEngine(lambda r: plan[min(r.turn, 1)], chat))
    rollout(env, chat, engine, "trajectory", group_size=4, n_tasks=1)  # the four tool workers start (seconds)
    trajs, _ = rollout(env, chat, engine, "trajectory", group_size=4, n_tasks=1)
    spans = [(r.metrics["start"], r.metrics["end"]) for t in trajs for r in t.tool_results]
    assert len(spans) == 4
    # Each call sleeps 0.4 s; one at a time they would not overlap at all.
    assert max(s for s, _ in spans) < min(e for _, e in spans)


def test_hf_engine_greedy_and_seeded_sampling_equal_batch(tiny, env):
    model, _, chat = tiny
    forced = HFEngine(model, chat, logits_processors=ForceScript(chat, script))
    a, _ = rollout(env, chat, forced, "batch")
    b, _ = rollout(env, chat, forced, "trajectory")
    assert fingerprint(a) == fingerprint(b)
    assert {len(t.images) for t in a} == {1, 2, 3}
    free = HFEngine(model, chat)
    for sampling in (SamplingParams(greedy=True, max_new_tokens=16), SamplingParams(max_new_tokens=16, top_k=50)):
        a, _ = rollout(env, chat, free, "batch", sampling=sampling)
        b, _ = rollout(env, chat, free, "trajectory", sampling=sampling)
        assert fingerprint(a) == fingerprint(b)


def test_a_hung_tool_is_a_tool_error_observation_in_trajectory_mode(tiny, env):
    chat = tiny[2]
    plan = [wait_call(30), ANSWER]  # `wait` has a 0.5 s limit
    engine = BatchedStepEngine(ScriptedEngine(lambda r: plan[min(r.turn, 1)], chat))
    start = time.perf_counter()
    trajs, _ = rollout(env, chat, engine, "trajectory", group_size=2, n_tasks=1)
    assert time.perf_counter() - start < 20
    results = [r for t in trajs for r in t.tool_results]
    assert [r.error_kind for r in results] == [ToolErrorKind.TIMEOUT] * 2
    assert all(t.termination == Termination.ANSWERED for t in trajs)


class StuckEnv(WaitZoomEnv):
    def format_result(self, result):  # an environment hook that never returns
        threading.Event().wait(60)
        return super().format_result(result)


def test_an_environment_step_that_never_returns_stops_the_rollout_with_a_clear_error(tiny):
    chat = tiny[2]
    env = StuckEnv(tools=tools())
    engine = BatchedStepEngine(ScriptedEngine(lambda r: zoom_call([0, 0, 224, 224]), chat))
    try:
        with pytest.raises(RolloutTimeout, match=r"trajectory s3-train-0-\d: its environment step took longer than "
                                                 r"rollout turn_timeout_s=1 s"):
            rollout(env, chat, engine, "trajectory", group_size=2, n_tasks=1, turn_timeout_s=1.0)
    finally:
        env.shutdown()


def test_batch_engine_without_a_step_api_times_out_the_same_way(tiny):
    chat = tiny[2]
    env = StuckEnv(tools=tools())
    engine = ScriptedEngine(lambda r: zoom_call([0, 0, 224, 224]), chat)  # no step API: batch per turn
    try:
        with pytest.raises(RolloutTimeout, match="turn_timeout_s=1 s"):
            rollout(env, chat, engine, "trajectory", group_size=2, n_tasks=1, turn_timeout_s=1.0)
    finally:
        env.shutdown()


class NeverDone:
    """A step engine whose requests never finish (an overloaded or stuck server)."""

    def __init__(self):
        self.aborted: list[str] = []

    def generate(self, requests, params):
        raise AssertionError("not used by the trajectory schedule")

    def update_weights(self, state_dict):
        pass

    def submit(self, handle, request, params):
        pass

    def step(self):
        time.sleep(0.01)
        return []

    def abort(self, handles):
        self.aborted += handles


def test_a_request_that_never_returns_stops_the_rollout_and_is_aborted(tiny, env):
    engine = NeverDone()
    with pytest.raises(RolloutTimeout, match=r"the engine did not return turn 0 within rollout turn_timeout_s=0.5 s"):
        rollout(env, tiny[2], engine, "trajectory", group_size=2, n_tasks=1, turn_timeout_s=0.5)
    assert sorted(engine.aborted) == ["s3-train-0-0#0", "s3-train-0-1#0"]  # nothing left running in the engine
