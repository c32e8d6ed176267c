"""Selecting stored trajectories by their index rows (no trajectory is parsed to filter)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from agent_grpo.store.record import IndexRow
from agent_grpo.trajectory import Termination


@dataclass(frozen=True)
class StepSet:
    """Steps as inclusive ranges, so `--step 0-300000000` costs two integers, not a set of 3e8."""

    ranges: tuple[tuple[int, int], ...]

    def __contains__(self, step: object) -> bool:
        return isinstance(step, int) and any(lo <= step <= hi for lo, hi in self.ranges)


def parse_steps(spec: str | None) -> StepSet | None:
    """`"3"`, `"3,5"`, `"2-4"` or a mix -> those steps; None or "" -> no constraint."""
    if not spec:
        return None
    ranges = []
    for part in spec.split(","):
        lo, dash, hi = part.strip().partition("-")
        try:
            a, b = int(lo), int(hi if dash else lo)
        except ValueError as e:
            raise ValueError(f"steps must look like '3', '3,5' or '2-4', got {spec!r}") from e
        if a < 0 or b < a:
            raise ValueError(f"steps must be >= 0 and ranges ascending ('2-4'), got {part.strip()!r}")
        ranges.append((a, b))
    return StepSet(tuple(ranges))


@dataclass(frozen=True)
class Filter:
    """All given conditions must hold. Names (task, group, id) accept shell patterns like `train-*`."""

    steps: StepSet | frozenset[int] | None = None
    env: str | None = None
    task: str | None = None
    group: str | None = None
    id: str | None = None
    min_reward: float | None = None
    max_reward: float | None = None
    termination: frozenset[str] | None = None
    tool: str | None = None  # "any" (called a tool), "none" (called none), or a tool name it called
    correct: bool | None = None

    def __post_init__(self) -> None:
        if self.termination:
            known = {t.value for t in Termination}
            unknown = set(self.termination) - known
            if unknown:
                raise ValueError(f"unknown termination {sorted(unknown)}; use one of {sorted(known)}")

    def matches(self, row: IndexRow) -> bool:
        checks = (
            self.steps is None or row.step in self.steps,
            self.env is None or row.env == self.env,
            _name(self.task, row.task_id),
            _name(self.group, row.group_id),
            _name(self.id, row.id),
            self.min_reward is None or row.reward >= self.min_reward,
            self.max_reward is None or row.reward <= self.max_reward,
            not self.termination or row.termination in self.termination,
            self._tool_ok(row),
            self.correct is None or row.correct is self.correct,
        )
        return all(checks)

    def apply(self, rows: Iterable[IndexRow]) -> list[IndexRow]:
        return [r for r in rows if self.matches(r)]

    def _tool_ok(self, row: IndexRow) -> bool:
        if self.tool is None:
            return True
        if self.tool == "any":
            return bool(row.tools)
        if self.tool == "none":
            return not row.tools
        return self.tool in row.tools


def _name(pattern: str | None, value: str) -> bool:
    return pattern is None or fnmatch.fnmatchcase(value, pattern)


def whole_groups(selected: Iterable[IndexRow], all_rows: Iterable[IndexRow]) -> list[IndexRow]:
    """Every row of each group that has a selected member (group-scope rewards need the whole group)."""
    groups = {r.group_id for r in selected}
    return [r for r in all_rows if r.group_id in groups]


def by_group(rows: Iterable[IndexRow]) -> dict[str, list[IndexRow]]:
    """Rows grouped by group id, groups in first-seen order, members by sample index."""
    groups: dict[str, list[IndexRow]] = {}
    for r in rows:
        groups.setdefault(r.group_id, []).append(r)
    return {g: sorted(rs, key=lambda r: r.sample_index) for g, rs in groups.items()}
