"""Filters select index rows by step, env, task, reward, ending, tool use and correctness."""

from __future__ import annotations

import pytest

from agent_grpo.replay.filters import Filter, by_group, parse_steps, whole_groups


def test_parse_steps():
    assert [s for s in range(10) if s in parse_steps("3")] == [3]
    assert [s for s in range(10) if s in parse_steps("1,4-6")] == [1, 4, 5, 6]
    assert parse_steps(None) is None and parse_steps("") is None
    with pytest.raises(ValueError, match="2-4"):
        parse_steps("three")


def test_each_condition(store):
    rows = store.rows

    def ids(f: Filter) -> set[str]:
        return {r.id for r in f.apply(rows)}

    assert len(Filter().apply(rows)) == 16
    assert all(r.step == 1 for r in Filter(steps=frozenset({1})).apply(rows))
    assert ids(Filter(task="train-0-1")) == {r.id for r in rows if r.task_id == "train-0-1"}
    assert ids(Filter(task="train-*")) == {r.id for r in rows}
    assert ids(Filter(group="s1-*", correct=True)) == {
        "s1-train-0-0-0", "s1-train-0-0-1", "s1-train-0-0-2", "s1-train-0-1-0", "s1-train-0-1-1", "s1-train-0-1-2"}
    assert all(r.reward >= 1.3 for r in Filter(min_reward=1.3).apply(rows))
    assert all(r.reward <= 0.2 for r in Filter(max_reward=0.2).apply(rows))
    assert ids(Filter(tool="none")) == {"s0-train-0-0-1", "s0-train-0-1-1"}
    assert ids(Filter(tool="tz_note")) == {r.id for r in rows if r.sample_index == 3}
    assert len(Filter(tool="any").apply(rows)) == 14
    assert Filter(termination=frozenset({"max_turns"})).apply(rows) == []
    assert Filter(env="other").apply(rows) == []
    with pytest.raises(ValueError, match="unknown termination"):
        Filter(termination=frozenset({"finished"}))


def test_groups(store):
    one = Filter(id="s0-train-0-0-2").apply(store.rows)
    group = whole_groups(one, store.rows)
    assert [r.sample_index for r in group] == [0, 1, 2, 3]
    assert list(by_group(store.rows)) == ["s0-train-0-0", "s0-train-0-1", "s1-train-0-0", "s1-train-0-1"]
