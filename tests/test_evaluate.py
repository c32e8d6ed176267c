"""Evaluation summaries: Wilson intervals, avg@k vs pass@k, per-category and group-averaged accuracy, tool-use
statistics, the columns an environment declares, the results tables."""

from __future__ import annotations

import pytest

from agent_grpo.envs.api import EvalColumn, EvalProtocol
from agent_grpo.evaluate import category_table, results_markdown, results_table, summarize, wilson
from agent_grpo.trajectory import Task, Termination, ToolCall, ToolErrorKind, ToolResult, Trajectory, Turn

# The columns visual-search declares (its `eval_protocol`); the framework itself names none.
ZOOM_COLUMNS = EvalProtocol(columns=(EvalColumn("needless_zooms", "needless zooms / traj"),
                                     EvalColumn("zoom_cell_iou", "zoom IoU (cell)", tool_users_only=True)))


def traj(group: str, correct: bool, calls: int = 1, cell_iou: float = 1.0, failed: int = 0, **metadata) -> Trajectory:
    tool_calls = [ToolCall(id=f"c{i}", name="zoom_in", raw="") for i in range(calls)]
    results = [ToolResult(call_id=f"c{i}", name="zoom_in", error="bad box", error_kind=ToolErrorKind.BAD_BOX)
               for i in range(failed)]
    turns = [Turn(index=0, text="", tool_calls=tool_calls, results=results)]
    t = Trajectory(id=f"{group}-{len(group)}", task=Task(id=group, question="?", metadata=metadata), env="e",
                   group_id=group, turns=turns, termination=Termination.ANSWERED if correct else Termination.MAX_TURNS)
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
    r = summarize("p", "e", "test", trajs, k=2, protocol=ZOOM_COLUMNS)
    assert r.accuracy == 0.25 and r.pass_at_k == 0.5 and r.tasks == 2
    assert r.calls_per_traj == 0.75
    assert r.metrics["zoom_cell_iou"] == pytest.approx((1 + 1 + 0.5) / 3)  # only trajectories that zoomed
    assert r.terminations == {"answered": 0.25, "max_turns": 0.75}


def test_results_table_has_one_row_per_policy():
    rows = [summarize(n, "e", "test", [traj("a", c)], 1) for n, c in (("before", False), ("after", True))]
    table = results_table(rows).splitlines()
    assert len(table) == 4 and table[2].startswith("| before | 0.0%") and table[3].startswith("| after | 100.0%")


def test_needless_zooms_are_averaged_over_all_trajectories_and_shown():
    trajs = [traj("a", True), traj("a", True, calls=3), traj("b", False, calls=0), traj("b", False)]
    for t, needless in zip(trajs, (0.0, 2.0, 0.0, 1.0), strict=True):
        t.metrics["needless_zooms"] = needless
    r = summarize("p", "e", "test", trajs, k=2, protocol=ZOOM_COLUMNS)
    assert r.metrics["needless_zooms"] == pytest.approx(3 / 4)  # trajectories without a zoom count, with 0
    unmeasured = summarize("q", "e", "test", [traj("a", True)], k=1, protocol=ZOOM_COLUMNS)
    assert unmeasured.metrics["needless_zooms"] is None  # an env whose rubric does not log the metric
    head, rule, row, row_unmeasured = results_table([r, unmeasured]).splitlines()
    columns = [c.strip() for c in head.strip("|").split("|")]
    assert columns[3] == "tool calls / traj" and columns[6:8] == ["needless zooms / traj", "zoom IoU (cell)"]
    assert rule.count("---") == len(columns) == row.count("|") - 1 == row_unmeasured.count("|") - 1
    assert [c.strip() for c in row.strip("|").split("|")][3] == "1.25"
    assert [c.strip() for c in row.strip("|").split("|")][6] == "0.75"
    assert [c.strip() for c in row_unmeasured.strip("|").split("|")][6] == "-"


def test_an_environment_without_columns_gets_no_zoom_columns():
    trajs = [traj("a", True)]
    trajs[0].metrics["needless_zooms"] = 3.0  # logged, but not a column this protocol declares
    r = summarize("p", "e", "test", trajs, k=1)
    head = results_table([r]).splitlines()[0]
    assert "zoom" not in head and "needless" not in head and r.metrics == {} and r.labels == {}


def test_tool_use_statistics_count_calls_trajectories_with_a_call_and_errors():
    trajs = [traj("a", True, calls=2, failed=1), traj("b", False, calls=0), traj("c", True, calls=2, failed=2),
             traj("d", True, calls=0)]
    tools = summarize("p", "e", "test", trajs, k=1).tool_use
    assert tools.calls_per_traj == 1.0 and tools.with_call == 0.5
    assert tools.failed_per_traj == 0.75 and tools.failed_share == 0.75 and tools.errors == {"bad_box": 3}
    row = results_table([summarize("p", "e", "test", trajs, k=1)]).splitlines()[2]
    assert [c.strip() for c in row.strip("|").split("|")][3:6] == ["1.00", "50%", "75%"]


def test_per_category_accuracy_and_its_table():
    # 2 of 3 "attr" tasks right, 1 of 2 "pos" tasks right; k = 1.
    trajs = [traj("a", True, category="attr"), traj("b", True, category="attr"), traj("c", False, category="attr"),
             traj("d", True, category="pos"), traj("e", False, category="pos"), traj("f", True)]
    r = summarize("p", "e", "test", trajs, k=1)
    assert [(c.category, c.tasks, c.accuracy) for c in r.categories] == [("attr", 3, 2 / 3), ("pos", 2, 0.5)]
    assert r.accuracy == 4 / 6  # the task without a category still counts overall
    lines = category_table(r).splitlines()
    assert lines[4] == "| attr | 3 | 3 | 66.7% | 66.7% |" and lines[5] == "| pos | 2 | 2 | 50.0% | 50.0% |"
    assert lines[6] == "| overall | 6 | 6 | 66.7% | 66.7% |"
    assert category_table(summarize("p", "e", "test", [traj("a", True)], k=1)) == ""


def test_group_averaged_accuracy_follows_the_protocol():
    # Cycle 1: 2 of 2 right; cycle 2: 1 of 4 right. Mean of cycles = (1 + 0.25) / 2, plain mean = 3 / 6.
    cycles = [("1", True, "x"), ("1", True, "y"), ("2", True, "x"), ("2", False, "x"), ("2", False, "y"),
              ("2", False, "y")]
    trajs = [traj(f"t{i}", ok, cycle=c, category=cat) for i, (c, ok, cat) in enumerate(cycles)]
    protocol = EvalProtocol(average_over="cycle", description="mean over cycles")
    r = summarize("p", "e", "test", trajs, k=1, protocol=protocol)
    assert r.accuracy == pytest.approx(0.625) and r.sample_accuracy == pytest.approx(0.5)
    # per category, cycles averaged too: x = (1/1 + 1/2) / 2, y = (1/1 + 0/2) / 2
    assert {c.category: c.accuracy for c in r.categories} == pytest.approx({"x": 0.75, "y": 0.5})
    assert "Protocol (e): mean over cycles" in results_markdown([r])


def test_no_trajectories_is_a_clear_error():
    with pytest.raises(ValueError, match="no trajectories"):
        summarize("p", "e", "test", [], k=1)
