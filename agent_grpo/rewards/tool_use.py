"""Tool-use rewards, and the rubrics that combine them with format and accuracy.

Sign convention: every component here has a positive weight; a cost is a component whose *value*
is negative (`tool_call_cost`, `failed_call_penalty`), so `traj.rewards` shows what was charged.

Two components read the accuracy computed earlier in the same rubric (`traj.rewards["accuracy"]`):
put `accuracy(...)` before them. Without that conditioning a tool bonus pays for calling tools
whatever the answer, and DeepEyes reports the opposite failure without any bonus: tool use collapses.
"""

from __future__ import annotations

from typing import Any

from agent_grpo.rewards.accuracy import Kind, accuracy
from agent_grpo.rewards.format import format_reward
from agent_grpo.rewards.hacking import HACKING_METRICS
from agent_grpo.rewards.rubric import RewardFn, Rubric, reward
from agent_grpo.trajectory import Trajectory


def successful_calls(traj: Trajectory) -> int:
    """Tool calls that ran without error."""
    return sum(1 for r in traj.tool_results if r.ok)


def is_correct(traj: Trajectory, accuracy_name: str = "accuracy", threshold: float = 0.5) -> bool:
    """`traj.rewards[accuracy_name] >= threshold`; ValueError if that component has not run yet."""
    if accuracy_name not in traj.rewards:
        raise ValueError(
            f"trajectory {traj.id}: no reward {accuracy_name!r} computed yet (has {sorted(traj.rewards)}); "
            f"a tool bonus is conditioned on correctness, so list the {accuracy_name!r} component before it "
            "in the Rubric, or pass accuracy_name= the name your accuracy component has"
        )
    return traj.rewards[accuracy_name] >= threshold


def tool_call_cost(per_call: float = 0.05, free_calls: int = 0, name: str = "tool_call_cost") -> RewardFn:
    """`-per_call * max(0, calls - free_calls)`: a price on every tool call beyond the free ones.

    Counts every call the model made, failed ones included (they cost tokens and time too).
    The value is <= 0; use a positive weight.
    """
    if per_call < 0 or free_calls < 0:
        raise ValueError(f"per_call and free_calls must be >= 0, got {per_call} and {free_calls}")

    def cost(traj: Trajectory) -> float:
        charged = max(0, traj.num_tool_calls - free_calls)
        return -per_call * charged if charged else 0.0  # not -0.0 in the logs

    cost.__doc__ = tool_call_cost.__doc__
    return reward(name)(cost)


@reward("failed_calls")
def failed_call_penalty(traj: Trajectory) -> float:
    """Minus the fraction of executed tool calls that failed (`ToolResult.error` set); 0 with no calls.

    A fraction rather than a count, so it stays in [-1, 0] whatever the number of calls
    (`tool_call_cost` prices the number).
    """
    results = traj.tool_results
    if not results:
        return 0.0
    failed = sum(1 for r in results if not r.ok)
    return -failed / len(results) if failed else 0.0


def conditional_tool_bonus(
    threshold: float = 0.5, accuracy_name: str = "accuracy", name: str = "tool_bonus", weight: float = 1.0
) -> RewardFn:
    """DeepEyes' tool bonus: 1.0 if the answer is correct AND at least one tool call succeeded, else 0.

    Correct means `traj.rewards[accuracy_name] >= threshold` (0.5 suits 0/1 accuracies and the usual
    IoU >= 0.5 criterion). Raises ValueError at scoring if the accuracy component has not run before it.
    """

    def tool_bonus(traj: Trajectory) -> float:
        return float(is_correct(traj, accuracy_name, threshold) and successful_calls(traj) >= 1)

    tool_bonus.__doc__ = conditional_tool_bonus.__doc__
    return reward(name, weight=weight)(tool_bonus)


def fewest_calls_bonus(
    min_calls: int = 1,
    decay: float = 0.5,
    threshold: float = 0.5,
    accuracy_name: str = "accuracy",
    name: str = "fewest_calls",
    weight: float = 1.0,
) -> RewardFn:
    """A group reward for getting it right with as few tool calls as the best of the group.

    Eligible members are correct (see `conditional_tool_bonus`) with at least `min_calls`
    successful calls; with the default 1 the bonus never pays for not looking, which would undo the
    tool bonus where the task needs tools (0 allows answering without tools). Among them, with `m`
    the fewest calls of any eligible member, one with `k` calls (failed calls included) gets
    `decay ** (k - m)`: 1.0 for the most economical, 0.5, 0.25, ... for each extra call. Everyone
    else gets 0.
    """
    if min_calls < 0 or not 0 <= decay <= 1:
        raise ValueError(f"need min_calls >= 0 and 0 <= decay <= 1, got {min_calls} and {decay}")

    def fewest_calls(group: list[Trajectory]) -> list[float]:
        eligible = [is_correct(t, accuracy_name, threshold) and successful_calls(t) >= min_calls for t in group]
        calls = [t.num_tool_calls for t, ok in zip(group, eligible, strict=True) if ok]
        if not calls:
            return [0.0] * len(group)
        fewest = min(calls)
        return [decay ** (t.num_tool_calls - fewest) if ok else 0.0 for t, ok in zip(group, eligible, strict=True)]

    fewest_calls.__doc__ = fewest_calls_bonus.__doc__
    return reward(name, weight=weight, scope="group")(fewest_calls)


def deepeyes_rubric(accuracy_kind: Kind = "exact", judge: Any = None, **accuracy_opts: Any) -> Rubric:
    """DeepEyes (arXiv 2505.14362): 0.8 x accuracy + 0.2 x format + 1.2 x tool bonus.

    With `judge` (a `JudgeConfig` or its fields as a mapping, e.g. an environment option), accuracy is
    an LLM judge's verdict (`rewards/judge.py`), as DeepEyes grades open-ended answers; else `accuracy_kind`.

    Departure: format is the per-turn fraction (`format_reward`) rather than all-or-nothing; use
    `strict_format_reward.with_weight(0.2)` in your own Rubric for the latter. Logs `HACKING_METRICS`.
    """
    if judge is not None:
        from agent_grpo.rewards.judge import judge_accuracy  # the HTTP client loads only when a judge is used

        if accuracy_opts:
            raise ValueError(f"accuracy options {sorted(accuracy_opts)} do not apply to an LLM judge; drop them")
        acc = judge_accuracy(judge, weight=0.8)
    else:
        acc = accuracy(accuracy_kind, weight=0.8, **accuracy_opts)
    return Rubric(
        [
            acc,
            format_reward.with_weight(0.2),
            conditional_tool_bonus(weight=1.2),
        ],
        metrics=HACKING_METRICS,
    )


def default_rubric(
    accuracy_kind: Kind = "exact",
    *,
    weights: dict[str, float] | None = None,
    per_call: float = 0.05,
    free_calls: int = 1,
    **accuracy_opts: Any,
) -> Rubric:
    """Accuracy, format and tool efficiency, every component in `traj.rewards`:

        1.0 x accuracy + 0.2 x format + 0.5 x tool_bonus + 1 x tool_call_cost
        + 0.2 x failed_calls + 0 x fewest_calls

    `fewest_calls` is logged with weight 0 (it overlaps `tool_call_cost`); `weights` changes any of
    them by name (`{"fewest_calls": 0.3, "tool_call_cost": 0}`). A correct answer after one
    successful call scores 1.7; each further call costs 0.05. Logs `HACKING_METRICS`.
    """
    rubric = Rubric(
        [
            accuracy(accuracy_kind, **accuracy_opts),
            format_reward.with_weight(0.2),
            conditional_tool_bonus(weight=0.5),
            tool_call_cost(per_call=per_call, free_calls=free_calls),
            failed_call_penalty.with_weight(0.2),
            fewest_calls_bonus(weight=0.0),
        ],
        metrics=HACKING_METRICS,
    )
    return rubric.with_weights(**weights) if weights else rubric
