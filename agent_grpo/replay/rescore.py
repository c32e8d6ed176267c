"""`replay rescore`: recompute the rewards of stored trajectories with another rubric, offline.

Which rubric (`rubric_for`):
  neither option          the run's own: its env's default rubric with the weights in meta.json
                          (reproduces the recorded rewards; a check that scoring is deterministic)
  --weights a=1,b=0       the run's rubric with those weights changed (0 turns a component off)
  --env OTHER             OTHER's default rubric (an installed environment), e.g. a stricter grader
  --env OTHER --weights   OTHER's rubric with those weights
Groups are always scored whole: group-scope components (e.g. "fewest calls among the correct")
depend on every member, so selecting one trajectory brings in its group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from agent_grpo.envs.registry import make_env
from agent_grpo.errors import StoreError
from agent_grpo.replay.filters import by_group, whole_groups
from agent_grpo.rewards.rubric import Rubric
from agent_grpo.store.meta import RunMeta
from agent_grpo.store.record import IndexRow
from agent_grpo.store.run_store import RunStore


@dataclass
class Rescored:
    id: str
    group_id: str
    step: int | None
    old_reward: float
    new_reward: float
    old: dict[str, float] = field(default_factory=dict)
    new: dict[str, float] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return self.old != self.new or self.old_reward != self.new_reward


def parse_weights(spec: str | None) -> dict[str, float]:
    """`"accuracy=1,format=0"` -> {"accuracy": 1.0, "format": 0.0}."""
    if not spec:
        return {}
    weights = {}
    for item in spec.split(","):
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            weights[name.strip()] = float(value)
        except ValueError as e:
            raise ValueError(f"weights look like 'accuracy=1,format=0.2'; could not read {item!r}") from e
    return weights


def rubric_for(meta: RunMeta, env: str | None = None, weights: dict[str, float] | None = None) -> Rubric:
    """The rubric named by the options above (builds the environment once to get it)."""
    name = env or meta.env
    if not name:
        raise ValueError("this run's meta.json names no environment; pass --env to choose a rubric")
    environment = make_env(name)
    try:
        rubric = environment.rubric
    finally:
        environment.shutdown()
    if env is None and meta.rubric:
        rubric = rubric.with_weights(**{k: w for k, w in meta.rubric.items() if k in rubric.weights})
    return rubric.with_weights(**weights) if weights else rubric


def rescore(store: RunStore, rows: Sequence[IndexRow], rubric: Rubric, skipped: list[str] | None = None) -> list[Rescored]:
    """Score the groups of `rows` with `rubric`; nothing is written back to the store.

    A group with a damaged record is left out whole (its group-scope rewards need every member)
    and described in `skipped`."""
    out = []
    for members in by_group(whole_groups(rows, store.rows)).values():
        damaged: list[str] = []
        group = list(store.iter(members, images=True, skipped=damaged))  # a rubric may look at pixels
        if damaged:
            if skipped is None:
                raise StoreError(damaged[0])
            skipped += [f"{d} (its group {members[0].group_id} is not rescored)" for d in damaged]
            continue
        before = [(t.reward, dict(t.rewards)) for t in group]
        rubric.score(group)
        for t, (old_reward, old) in zip(group, before, strict=True):
            out.append(Rescored(t.id, t.group_id, t.step, old_reward, t.reward, old, dict(t.rewards)))
    return out
