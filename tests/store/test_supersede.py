"""A resumed run redoes the steps after its checkpoint: their stored records move aside, so the run
holds each step once, as its metrics do (issue 15 item 6); nothing is deleted."""

from __future__ import annotations

import json

from scripted_run import build_run, comparable, run_group

from agent_grpo.recipes.grpo import drop_metrics_after
from agent_grpo.store import RunStore


def test_supersede_from_moves_the_later_steps_aside(tmp_path, tiny_env):
    run = tmp_path / "run"
    written = build_run(run, steps=(0, 1, 2), n_tasks=1)
    before = (run / "trajectories.jsonl").read_bytes()
    with RunStore.create(run) as store:
        assert store.supersede_from(1) == 8
        assert {r.step for r in store.rows} == {0}
        task = tiny_env.load_tasks(n=1)[0]
        redo = run_group(tiny_env, task, 1)
        store.extend(redo)  # the same ids again: no "already stored", no duplicate
    after = RunStore.open(run)
    assert after.problems() == []
    assert [r.id for r in after.rows] == [t.id for t in written[:4]] + [t.id for t in redo]
    assert comparable(after.read(redo[0].id)) == comparable(redo[0])
    (moved,) = (run / "superseded").glob("trajectories-*.jsonl")
    cut = len(before) - moved.stat().st_size
    now = (run / "trajectories.jsonl").read_bytes()
    assert before[:cut] == now[:cut] and before[cut:] == moved.read_bytes()  # the stopped run's bytes, kept whole
    assert [json.loads(x)["trajectory"]["step"] for x in moved.read_text().splitlines()] == [1] * 4 + [2] * 4
    with RunStore.create(run) as store:
        assert store.supersede_from(5) == 0


def test_dropped_metric_rows_are_kept_aside(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "reward": s / 10}) + "\n" for s in (1, 2, 3, 3)))
    drop_metrics_after(path, 2)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2]
    kept = tmp_path / "metrics.superseded.jsonl"
    assert [json.loads(x)["step"] for x in kept.read_text().splitlines()] == [3, 3]
