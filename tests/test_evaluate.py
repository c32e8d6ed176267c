"""Evaluation summaries: Wilson intervals, avg@k vs pass@k, the results table."""

from __future__ import annotations

import pytest

from agent_grpo.evaluate import results_table, summarize, wilson
from agent_grpo.trajectory import Task, Termination, ToolCall, Trajectory, Turn


def traj(group: str, correct: bool, calls: int = 1, cell_iou: float = 1.0) -> Trajectory:
    turns = [Turn(index=0, text="", tool_calls=[ToolCall(id=f"c{i}", name="zoom_in", raw="") for i in range(calls)])]
    t = Trajectory(id=f"{group}-{len(group)}", task=Task(id=group, question="?"), env="e", group_id=group, turns=turns,
                   termination=Termination.ANSWERED if correct else Termination.MAX_TURNS)
    t.rewards = {"accuracy": 1.0 if correct else 0.0}
    t.reward = t.rewards["accuracy"]
    t.metrics = {"zoom_cell_iou": cell_iou}
    return t


def test_wilson_matches_the_textbook_values():
    # 8 of 10: centre (0.8 + 1.96^2/20) / (1 + 1.96^2/10) = 0.7167; half-width 0.2264 -> [0.4902, 0.9433]
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    assert wilson(0, 0) == (0.0, 0.0)


def test_avg_at_k_and_pass_at_k_differ_as_defined():
    # Task a: 1 of 2 right; task b: 0 of 2 -> avg@2 = 1/4, pass@2 = 1/2.
    trajs = [traj("a", True), traj("a", False, calls=0), traj("b", False), traj("b", False, cell_iou=0.5)]
    r = summarize("p", "e", "test", trajs, k=2)
    assert r.accuracy == 0.25 and r.pass_at_k == 0.5 and r.tasks == 2
    assert r.calls_per_traj == 0.75
    assert r.zoom_cell_iou == pytest.approx((1 + 1 + 0.5) / 3)  # only trajectories that zoomed
    assert r.terminations == {"answered": 0.25, "max_turns": 0.75}


def test_results_table_has_one_row_per_policy():
    rows = [summarize(n, "e", "test", [traj("a", c)], 1) for n, c in (("before", False), ("after", True))]
    table = results_table(rows).splitlines()
    assert len(table) == 4 and table[2].startswith("| before | 0.0%") and table[3].startswith("| after | 100.0%")


def test_needless_zooms_are_averaged_over_all_trajectories_and_shown():
    trajs = [traj("a", True), traj("a", True, calls=3), traj("b", False, calls=0), traj("b", False)]
    for t, needless in zip(trajs, (0.0, 2.0, 0.0, 1.0), strict=True):
        t.metrics["needless_zooms"] = needless
    r = summarize("p", "e", "test", trajs, k=2)
    assert r.needless_zooms == pytest.approx(3 / 4)  # trajectories without a zoom count, with 0
    unmeasured = summarize("q", "e", "test", [traj("a", True)], k=1)
    assert unmeasured.needless_zooms is None  # an env that does not log the metric
    head, rule, row, row_unmeasured = results_table([r, unmeasured]).splitlines()
    columns = [c.strip() for c in head.strip("|").split("|")]
    assert columns[3:5] == ["zoom calls / traj", "needless zooms / traj"]
    assert rule.count("---") == len(columns) == row.count("|") - 1 == row_unmeasured.count("|") - 1
    assert [c.strip() for c in row.strip("|").split("|")][3:5] == ["1.25", "0.75"]
    assert [c.strip() for c in row_unmeasured.strip("|").split("|")][4] == "-"
