"""Every numeric metric an environment or its rubric defines reaches metrics.jsonl and TensorBoard."""

from __future__ import annotations

import inspect

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from zoom_fixtures import TWO_ZOOMS, ZoomEnv

import agent_grpo.train.metrics as metrics_module
from agent_grpo.models.chat import ChatFormat
from agent_grpo.models.tiny import build_tiny_model
from agent_grpo.rewards import accuracy, format_reward
from agent_grpo.rewards.hacking import HACKING_METRICS
from agent_grpo.rewards.rubric import Rubric, metric
from agent_grpo.rollout import RolloutConfig, RolloutDriver, SamplingParams, ScriptedEngine
from agent_grpo.train.metrics import MetricsLogger, read_metrics, trajectory_metrics


@metric("answer_is_three")
def answer_is_three(traj) -> float:
    return float(traj.answer == "3")


class MetricEnv(ZoomEnv):
    """ZoomEnv whose `on_finish` logs its own metrics and whose rubric adds one more and the hacking indicators."""

    name = "metric-test"

    def default_rubric(self):
        return Rubric([format_reward.with_weight(0.2), accuracy("exact", weight=0.8)],
                      metrics=[answer_is_three, *HACKING_METRICS])

    def on_finish(self, episode):
        t = episode.trajectory
        episode.trajectory.metrics["looks_per_answer"] = float(t.num_tool_calls)
        if t.num_tool_calls:  # reported only where something was zoomed
            episode.trajectory.metrics["zoom_depth"] = float(t.num_tool_calls - 1)
        episode.trajectory.metrics["broken"] = float("nan")  # never averaged in


@pytest.fixture(scope="module")
def trajectories():
    _, processor = build_tiny_model()
    chat = ChatFormat(processor)
    env = MetricEnv()
    looked_for_show = [TWO_ZOOMS[0].replace("look closer", "probably 3"), *TWO_ZOOMS[1:]]
    plans = {0: looked_for_show, 1: ["<think>no need</think><answer>7</answer>"]}
    engine = ScriptedEngine(lambda r: plans[int(r.key.rsplit("-", 1)[1])][r.turn], chat)
    config = RolloutConfig(group_size=2, max_total_tokens=2048, sampling=SamplingParams(max_new_tokens=64))
    trajs = RolloutDriver(env, engine, chat, config).rollout(env.load_tasks("train", n=1), step=1)
    env.shutdown()
    return trajs


def test_env_and_rubric_metrics_are_averaged_under_their_own_names(trajectories):
    zoomed, direct = trajectories
    assert zoomed.num_tool_calls == 2 and direct.num_tool_calls == 0
    m = trajectory_metrics(trajectories)
    assert m["looks_per_answer"] == pytest.approx((2 + 0) / 2)
    assert m["zoom_depth"] == pytest.approx(1.0)  # over the one trajectory that reports it
    assert m["answer_is_three"] == pytest.approx(0.5)  # the rubric's own metric
    for hacking in ("zoom_covers_image", "empty_answer", "answer_before_looking"):
        assert hacking in m
    assert m["answer_before_looking"] == pytest.approx(0.5)  # '3' was thought before zooming, then answered
    assert "broken" not in m  # NaN everywhere: nothing to average
    assert m["tool/zoom_in/zoom_area_fraction"] > 0  # a tool's own metric, over its calls
    assert m["turns"] == pytest.approx((3 + 1) / 2)


def test_they_reach_metrics_jsonl_and_tensorboard(trajectories, tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=True)
    logger.log(1, trajectory_metrics(trajectories))
    logger.close()
    [row] = read_metrics(tmp_path / "metrics.jsonl")
    assert row["looks_per_answer"] == 1.0 and row["answer_is_three"] == 0.5 and "zoom_covers_image" in row
    tags = EventAccumulator(str(tmp_path / "tensorboard")).Reload().Tags()["scalars"]
    assert {"looks_per_answer", "zoom_depth", "answer_is_three", "answer_before_looking"} <= set(tags)


def test_the_framework_names_no_environment_metric():
    source = inspect.getsource(metrics_module.trajectory_metrics)
    for name in ("zoom_precision", "zoom_cell_iou", "needless_zooms"):  # visual-search's own metrics
        assert name not in source


def test_driver_event_flags_are_rates_over_every_trajectory(trajectories):
    flagged = trajectories[0].model_copy(update={"metrics": {**trajectories[0].metrics, "context_overflow": 1.0}})
    assert trajectory_metrics([flagged, trajectories[1]])["context_overflow"] == pytest.approx(0.5)
