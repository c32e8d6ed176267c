"""Rubrics: weighted reward components, each a small function whose scope is declared.

    @reward(weight=0.8)
    def correct(traj: Trajectory) -> float: ...

    @reward(weight=0.5, scope="group")
    def fewest_calls(group: list[Trajectory]) -> list[float]: ...

    rubric = Rubric([correct, fewest_calls], metrics=[empty_answer])
    rubric.score(group)   # fills traj.rewards (unweighted), traj.reward (weighted sum), traj.metrics

Components run in the order given, so a later component may read `traj.rewards` of an earlier one
(the DeepEyes tool bonus reads `accuracy`). Metrics are logged, never added to the reward.

A component that cannot score one trajectory (an LLM judge timed out or answered garbage) raises
`RewardError` for it (a group component puts a `RewardError` in its list instead): that trajectory gets
the component's `on_error` value (0 by default), the message in `traj.reward_errors[name]` and their
count in `traj.metrics["reward_errors"]` (set only where there is one); the rest of the group and the run
go on. GRPO gives such a trajectory advantage 0, outside its group's statistics (`train/advantages.py`).
Any other exception is a bug and propagates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from agent_grpo.errors import AgentGrpoError
from agent_grpo.trajectory import Trajectory

Scope = Literal["trajectory", "group"]


class RewardError(AgentGrpoError):
    """A reward component could not score one trajectory; recorded on it, never raised into the run."""


@dataclass(frozen=True)
class RewardFn:
    """A named reward (or metric) function with its weight and scope."""

    name: str
    fn: Callable
    weight: float = 1.0
    scope: Scope = "trajectory"
    on_error: float = 0.0  # the value a trajectory gets when this component raises RewardError for it

    def values(self, group: Sequence[Trajectory]) -> list[float]:
        """One value per trajectory; a `RewardError` is recorded on its trajectory (`reward_errors`)."""
        if self.scope == "group":
            out = list(self.fn(list(group)))
            if len(out) != len(group):
                raise ValueError(f"group reward {self.name} returned {len(out)} values for {len(group)} trajectories")
        else:
            out = [self._one(t) for t in group]
        for t, v in zip(group, out, strict=True):
            if isinstance(v, RewardError):
                t.reward_errors[self.name] = str(v)
        values = [self.on_error if isinstance(v, RewardError) else float(v) for v in out]
        bad = [v for v in values if not math.isfinite(v)]
        if bad:
            raise ValueError(f"reward {self.name} returned a non-finite value {bad[0]}")
        return values

    def _one(self, traj: Trajectory) -> float | RewardError:
        try:
            return self.fn(traj)
        except RewardError as e:
            return e

    def with_weight(self, weight: float) -> RewardFn:
        return replace(self, weight=weight)


def reward(name: str | Callable | None = None, *, weight: float = 1.0, scope: Scope = "trajectory"):
    """Declare a reward component, as `@reward` or `@reward("name", weight=..., scope=...)`.

    `scope="group"` functions take the whole group and return one value per trajectory.
    """
    if scope not in ("trajectory", "group"):
        raise ValueError(f"scope must be 'trajectory' or 'group', got {scope!r}")
    if callable(name):  # used bare: @reward
        return RewardFn(name=name.__name__, fn=name, weight=weight, scope=scope)

    def wrap(fn: Callable) -> RewardFn:
        return RewardFn(name=name or fn.__name__, fn=fn, weight=weight, scope=scope)

    return wrap


def metric(name: str | Callable | None = None, *, scope: Scope = "trajectory"):
    """Declare a logged-only metric (e.g. a reward-hacking indicator)."""
    return reward(name, weight=0.0, scope=scope)


class Rubric:
    """An ordered set of weighted reward components plus logged metrics."""

    def __init__(self, components: Sequence[RewardFn], metrics: Sequence[RewardFn] = ()):
        names = [c.name for c in [*components, *metrics]]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"rubric component names must be unique, repeated: {sorted(dupes)}")
        self.components = list(components)
        self.metrics = list(metrics)

    @property
    def weights(self) -> dict[str, float]:
        return {c.name: c.weight for c in self.components}

    def with_weights(self, **weights: float) -> Rubric:
        """A copy with some weights changed (0 turns a component off but still logs it)."""
        unknown = set(weights) - set(self.weights)
        if unknown:
            raise ValueError(f"unknown reward components {sorted(unknown)}; this rubric has {sorted(self.weights)}")
        comps = [c.with_weight(weights.get(c.name, c.weight)) for c in self.components]
        return Rubric(comps, self.metrics)

    def score(self, group: Sequence[Trajectory]) -> None:
        """Score a group of trajectories of the same task in place."""
        for t in group:
            t.rewards = {}
            t.reward_errors = {}
        for comp in self.components:
            for t, v in zip(group, comp.values(group), strict=True):
                t.rewards[comp.name] = v
        for t in group:
            t.reward = sum(c.weight * t.rewards[c.name] for c in self.components)
            if t.reward_errors:  # an event flag (train/metrics.py): absent counts as 0 in the step's mean
                t.metrics["reward_errors"] = float(len(t.reward_errors))
            else:
                t.metrics.pop("reward_errors", None)  # rescored without error
        for m in self.metrics:
            for t, v in zip(group, m.values(group), strict=True):
                t.metrics[m.name] = v

    def describe(self) -> str:
        return " + ".join(f"{c.weight:g} x {c.name}" for c in self.components)
