"""visual-search rewards: the tool-efficiency reward (needless zooms) and the no-tools demonstrations.

Trajectories are real: scripted model turns played through the environment with the `zoom_in` tool.
A zoom is useful when it shows the whole red square (how legible it is then is the accuracy reward's
business); every other tool call (a second zoom, a zoom on the wrong cell, a zoom that cuts the
square, a call that failed) is needless and costs `tool_cost` (default 0.2).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from agent_grpo_envs import VisualSearchEnv
from agent_grpo_envs._common import count_needless_zooms
from agent_grpo_envs.visual_search.policy import direct_turns, play, play_scripted
from env_fixtures import answer, zoom

from agent_grpo.boxes import Box
from agent_grpo.budget import VisualBudget
from agent_grpo.trajectory import Termination

CANVAS, CELL = 896, 224

# The default rubric: 0.8 x accuracy + 0.2 x format + 0.5 x tool_bonus + 1 x tool_efficiency,
# tool_efficiency = -0.2 x needless zooms. A right answer after a zoom earns 0.8 + 0.2 + 0.5 = 1.5.
TOOL_COST = 0.2
RIGHT_AFTER_A_ZOOM = 0.8 + 0.2 + 0.5


@pytest.fixture(scope="module")
def env(zoom_tools):
    e = VisualSearchEnv(tools=zoom_tools)
    yield e
    e.shutdown()


@pytest.fixture(scope="module")
def task(env):
    return env.load_tasks("test", 1)[0]


def _cell(task) -> list[float]:
    return list(task.metadata["cell_box"])


def _other_cell(task) -> list[float]:
    """The next cell to the right (wrapping round the row): never the target's."""
    x1, y1, _, _ = task.metadata["cell_box"]
    x = (x1 + CELL) % CANVAS
    return [x, y1, x + CELL, y1 + CELL]


def _two_by_two(task) -> list[float]:
    """The 2 x 2-cell block (448 px) holding the target's cell: IoU with the cell 1/4."""
    x1, y1 = (min(v, CANVAS - 2 * CELL) for v in task.metadata["cell_box"][:2])
    return [x1, y1, x1 + 2 * CELL, y1 + 2 * CELL]


def _grown(task, pad: float) -> list[float]:
    x1, y1, x2, y2 = task.metadata["cell_box"]
    return [max(0, x1 - pad), max(0, y1 - pad), min(CANVAS, x2 + pad), min(CANVAS, y2 + pad)]


def _cutting_the_square(task) -> list[float]:
    """The cell, its left edge moved 10 px into the red square: about the cell's size, square cut."""
    _, y1, x2, y2 = task.metadata["cell_box"]
    return [task.metadata["target_box"][0] + 10, y1, x2, y2]


# (name, the zoom boxes before answering, needless zooms)
CASES = [
    ("no zoom", [], 0),
    ("one exact zoom", [_cell], 0),
    ("a zoom 16 px looser than the cell", [lambda t: _grown(t, 16)], 0),
    ("one zoom exactly on the red square", [lambda t: t.metadata["target_box"]], 0),
    ("two exact zooms", [_cell, _cell], 1),
    ("a wrong cell, then the exact one", [_other_cell, _cell], 1),
    ("the exact cell, then a wrong one", [_cell, _other_cell], 1),
    ("one zoom on a wrong cell", [_other_cell], 1),
    ("one zoom on the whole canvas (16 cells): loose, not needless", [lambda t: [0, 0, CANVAS, CANVAS]], 0),
    ("one zoom on a 2 x 2-cell box (4 cells)", [_two_by_two], 0),
    ("a 2 x 2-cell zoom, then the exact cell", [_two_by_two, _cell], 1),
    ("one zoom cutting into the square", [_cutting_the_square], 1),
    ("a failed call, then the exact zoom", [lambda t: [500, 500, 400, 600], _cell], 1),
]


@pytest.mark.parametrize("boxes, needless", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_needless_zooms_and_tool_efficiency(env, task, boxes, needless):
    traj = play(env, task, [*(zoom(box(task)) for box in boxes), answer(task.answer)])
    env.score_group([traj])
    assert traj.termination == Termination.ANSWERED and traj.num_tool_calls == len(boxes)
    assert count_needless_zooms(traj) == needless == traj.metrics["needless_zooms"]
    efficiency = traj.rewards["tool_efficiency"]
    assert efficiency == pytest.approx(-TOOL_COST * needless)
    assert math.copysign(1.0, efficiency) == 1.0 or needless  # 0.0, never -0.0, when nothing was needless
    succeeded = any(r.ok for r in traj.tool_results)
    assert traj.rewards == {
        "accuracy": 1.0, "format": 1.0, "tool_bonus": 1.0 if succeeded else 0.0, "tool_efficiency": efficiency
    }
    assert traj.reward == pytest.approx(0.8 + 0.2 + 0.5 * succeeded - TOOL_COST * needless)


def test_boxes_of_the_cases_are_what_their_names_say(task):
    """The geometry behind the cases: coverage of the target and IoU with the cell."""
    cell, target = Box.from_list(task.metadata["cell_box"]), Box.from_list(task.metadata["target_box"])
    assert Box.from_list([0, 0, CANVAS, CANVAS]).iou(cell) == pytest.approx(1 / 16)
    assert Box.from_list(_two_by_two(task)).iou(cell) == pytest.approx(1 / 4)
    assert Box.from_list(_other_cell(task)).iou(cell) == 0.0
    assert Box.from_list(_grown(task, 16)).iou(cell) >= (224 / 256) ** 2 > 0.5
    cut = Box.from_list(_cutting_the_square(task))
    assert cut.iou(cell) > 0.5 and cut.x1 > target.x1


def test_needless_zooms_add_up_and_scale_with_tool_cost(zoom_tools, task):
    """Two needless zooms cost twice as much; tool_cost sets the price per needless zoom."""
    roomy = VisualBudget(
        max_turns=4, max_images=4, max_pixels_per_image=112 * 112, max_pixels_per_task_image=112 * 112
    )
    turns = [zoom(_other_cell(task)), zoom([0, 0, CANVAS, CANVAS]), zoom(_cell(task)), answer(task.answer)]
    for cost in (0.2, 0.5):
        env = VisualSearchEnv(config={"tool_cost": cost}, budget=roomy, tools=zoom_tools)
        traj = play(env, task, turns)
        env.score_group([traj])
        assert traj.termination == Termination.ANSWERED and traj.metrics["needless_zooms"] == 2
        assert traj.rewards["tool_efficiency"] == pytest.approx(-2 * cost)
        assert traj.reward == pytest.approx(RIGHT_AFTER_A_ZOOM - 2 * cost)
        env.shutdown()


def test_tool_cost_zero_removes_the_component(zoom_tools, task):
    env = VisualSearchEnv(config={"tool_cost": 0}, tools=zoom_tools)
    assert env.rubric.weights == {"accuracy": 0.8, "format": 0.2, "tool_bonus": 0.5}
    traj = play(env, task, [zoom(_cell(task)), zoom(_cell(task)), answer(task.answer)])
    env.score_group([traj])
    assert "tool_efficiency" not in traj.rewards
    assert traj.metrics["needless_zooms"] == 1  # still measured and logged, not rewarded
    assert traj.reward == pytest.approx(RIGHT_AFTER_A_ZOOM)
    env.shutdown()


def test_default_rubric_has_the_efficiency_component(env):
    assert env.config.tool_cost == TOOL_COST
    assert env.rubric.weights == {"accuracy": 0.8, "format": 0.2, "tool_bonus": 0.5, "tool_efficiency": 1.0}


def test_no_target_box_means_nothing_needless(env, task):
    traj = play(env, task, [zoom(_other_cell(task)), answer(task.answer)])
    assert count_needless_zooms(traj) == 1
    bare = traj.model_copy(update={"task": task.model_copy(update={"metadata": {}})})
    assert count_needless_zooms(bare) == 0.0


def test_scripted_ideal_policy_makes_no_needless_zoom(env):
    group = [play_scripted(env, t, quality=1.0) for t in env.load_tasks("train", 8)]
    env.score_group(group)
    assert [t.metrics["needless_zooms"] for t in group] == [0.0] * 8
    assert all(t.rewards["tool_efficiency"] == 0.0 for t in group)


# ---- direct_turns: answering from the full view, the no-tools ablation's demonstrations -------


def test_direct_turns_at_quality_one_answer_right_without_a_tool(env):
    for t in env.load_tasks("test", 5):
        [turn] = direct_turns(t, quality=1.0)
        assert "<tool_call>" not in turn and turn.endswith(f"<answer>{t.answer}</answer>")
        traj = play(env, t, [turn])
        env.score_group([traj])
        assert traj.termination == Termination.ANSWERED and len(traj.turns) == 1 and traj.num_tool_calls == 0
        assert traj.rewards == {"accuracy": 1.0, "format": 1.0, "tool_bonus": 0.0, "tool_efficiency": 0.0}
        assert traj.reward == pytest.approx(0.8 + 0.2)  # no tool bonus, nothing needless


def test_direct_turns_noise_is_reproducible():
    tasks = VisualSearchEnv().load_tasks("train", 100)
    turns = [direct_turns(t, quality=0.0, rng=np.random.default_rng(i)) for i, t in enumerate(tasks)]
    assert turns == [direct_turns(t, quality=0.0, rng=np.random.default_rng(i)) for i, t in enumerate(tasks)]
    answers = [ts[0].rpartition("<answer>")[2].removesuffix("</answer>") for ts in turns]
    right = np.mean([a == t.answer for a, t in zip(answers, tasks, strict=True)])
    assert 0.74 < right < 0.96  # quality 0: a guess with probability 0.2, so right 0.8 + 0.2 x 1/10 = 0.82
    with pytest.raises(ValueError, match="quality"):
        direct_turns(tasks[0], quality=1.5)


def test_sft_demo_of_direct_turns_is_one_turn_through_the_env():
    """As the no-tools ablation sets it: a tool-less env and `data.policy=...policy:direct_turns`."""
    from agent_grpo.models.chat import ChatFormat
    from agent_grpo.models.tiny import build_tiny_model
    from agent_grpo.train.sft_data import SFTDataConfig, load_sft_data

    torch.set_num_threads(1)
    _, processor = build_tiny_model(size="S", seed=0)
    env = VisualSearchEnv(allow_tools=False)
    cfg = SFTDataConfig(policy="agent_grpo_envs.visual_search.policy:direct_turns", quality=1.0)
    data = load_sft_data(cfg, env, ChatFormat(processor), num_train_tasks=3, num_eval_tasks=1)
    assert len(data.train) == 3 and len(data.eval) == 1
    for traj in data.train + data.eval:
        assert len(traj.turns) == 1 and traj.num_tool_calls == 0 and len(traj.images) == 1
        assert [s.kind for s in traj.segments] == ["prompt", "sampled"]
        assert traj.termination == Termination.ANSWERED and traj.rewards["accuracy"] == 1.0
        assert "tool_efficiency" in traj.rewards and traj.rewards["tool_efficiency"] == 0.0
    env.shutdown()
