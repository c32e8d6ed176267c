"""Group-relative advantages and dynamic sampling of groups.

Glossary: N trajectories in the batch; a *group* is the G trajectories sampled for one task
(`Trajectory.group_id`). Groups may have different sizes when given by id.

The advantage is TRL 1.16's `GRPOTrainer` formula ("sum_then_normalize"), to the epsilon:

    A_i = r_i - mean_{group(i)}(r)                            scale="none"   (Dr. GRPO)
    A_i = (r_i - mean_{group(i)}(r)) / (std_{group(i)}(r) + eps)  scale="group"  (GRPO paper)
    A_i = (r_i - mean_{group(i)}(r)) / (std_{batch}(r) + eps)     scale="batch"  (PPO-Lite)

std is the unbiased (Bessel) standard deviation; a single value has std 0. The GRPO paper divides
by std alone; the eps keeps zero-variance groups at advantage 0 instead of 0/0.

Dynamic sampling (DAPO): a group whose rewards are all equal has advantage 0 everywhere and gives
no gradient, so it is dropped and the trainer samples more groups to refill the batch.

A trajectory whose reward could not be computed (`reward_errors`: a judge timed out) has an unknown reward, not
its component's `on_error` value: it gets advantage 0 and moves neither its group's mean nor std
(`scored_advantages`), and it does not make a group informative.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple, Protocol, TypeVar

import torch

Scale = Literal["group", "batch", "none"]


class _Rewarded(Protocol):
    reward: float  # and optionally `reward_errors` (a Trajectory's): a non-empty one means the reward is unknown


def _unscored(t: _Rewarded) -> bool:
    return bool(getattr(t, "reward_errors", None))


R = TypeVar("R", bound=_Rewarded)


def group_index(groups: Sequence[str] | int, n: int) -> torch.Tensor:
    """Group number of each of the n trajectories, `[N]` long, numbered by first appearance.

    `groups` is either one group id per trajectory (any order) or a group size G, meaning
    contiguous groups `[0, G), [G, 2G), ...` as TRL lays them out.
    """
    if isinstance(groups, int):
        if groups < 1 or n % groups:
            raise ValueError(
                f"{n} rewards do not split into groups of {groups}; pass group ids or a divisor of {n}"
            )
        return torch.arange(n) // groups
    if len(groups) != n:
        raise ValueError(f"{len(groups)} group ids for {n} rewards; pass one group id per reward")
    numbers: dict[str, int] = {}
    return torch.tensor([numbers.setdefault(g, len(numbers)) for g in groups], dtype=torch.long)


def _std(x: torch.Tensor) -> torch.Tensor:
    """Unbiased std computed as TRL's `nanstd` does; 0 for a single value (TRL's convention)."""
    n = x.numel()
    if n < 2:
        return x.new_zeros(())
    return (((x - x.mean()) ** 2).mean() * (n / (n - 1))).sqrt()


def group_advantages(
    rewards: torch.Tensor | Sequence[float],
    groups: Sequence[str] | int,
    scale: Scale = "group",
    eps: float = 1e-4,
) -> torch.Tensor:
    """Group-relative advantages `[N]` of rewards `[N]` (see the module docstring for the formula)."""
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be one value per trajectory, shape [N]; got {tuple(rewards.shape)}")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards must be finite; a reward function returned NaN or inf")
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale={scale!r}; use 'group', 'batch' or 'none'")
    index = group_index(groups, rewards.numel())  # [N]
    mean = torch.empty_like(rewards)  # [N] mean of each trajectory's group
    std = torch.empty_like(rewards)  # [N] std of each trajectory's group
    for g in range(int(index.max()) + 1 if rewards.numel() else 0):
        members = index == g
        mean[members] = rewards[members].mean()
        std[members] = _std(rewards[members])
    if scale == "batch":
        std = _std(rewards).expand_as(rewards)
    advantages = rewards - mean
    if scale != "none":
        advantages = advantages / (std + eps)
    return advantages


def zero_variance_groups(
    rewards: torch.Tensor | Sequence[float], groups: Sequence[str] | int, atol: float = 1e-8
) -> torch.Tensor:
    """`[N]` bool: True where the trajectory's group has all rewards equal (max - min <= atol)."""
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    index = group_index(groups, rewards.numel())
    flat = torch.zeros_like(rewards, dtype=torch.bool)
    for g in range(int(index.max()) + 1 if rewards.numel() else 0):
        members = index == g
        flat[members] = bool(rewards[members].max() - rewards[members].min() <= atol)
    return flat


def scored_advantages(trajs: Sequence[_Rewarded], groups: Sequence[str], scale: Scale = "group") -> list[float]:
    """`group_advantages` of the trajectories whose reward was computed; one with `reward_errors` gets 0."""
    scored = [i for i, t in enumerate(trajs) if not _unscored(t)]
    adv = group_advantages([trajs[i].reward for i in scored], [groups[i] for i in scored], scale=scale).tolist()
    out = [0.0] * len(trajs)
    for i, a in zip(scored, adv, strict=True):
        out[i] = a
    return out


def _informative(group: Sequence[_Rewarded], atol: float) -> bool:
    rewards = [t.reward for t in group if not _unscored(t)]  # an unknown reward tells nothing
    return len(rewards) > 1 and max(rewards) - min(rewards) > atol


def dynamic_sampling(groups: Sequence[Sequence[R]], atol: float = 1e-8) -> tuple[list[list[R]], int]:
    """Keep the groups whose rewards differ (anything with `.reward`); return (kept, number dropped).

    A group of one trajectory is dropped too: its advantage is 0 whatever the reward.
    """
    kept = [list(g) for g in groups if _informative(g, atol)]
    return kept, len(groups) - len(kept)


class GroupSelection(NamedTuple):
    groups: list  # informative groups, at most `target_groups`, in the order given
    dropped: int  # zero-variance groups discarded
    needed: int  # informative groups still missing to reach the target (0 when full)


def select_groups(groups: Sequence[Sequence[R]], target_groups: int, atol: float = 1e-8) -> GroupSelection:
    """DAPO's refill step as a pure function: keep informative groups up to `target_groups`.

    The trainer calls it on everything sampled so far for this step, samples `needed` more groups
    (it may over-sample) and calls it again, until `needed == 0` or its round limit is hit; then it
    trains on a smaller batch rather than stalling. Informative groups past the target are left out.
    """
    if target_groups < 1:
        raise ValueError(f"target_groups={target_groups}; the batch needs at least one group")
    kept, dropped = dynamic_sampling(groups, atol)
    return GroupSelection(kept[:target_groups], dropped, max(0, target_groups - len(kept)))
