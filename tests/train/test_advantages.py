"""Group-relative advantages and dynamic sampling on tiny hand-computed rewards."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from agent_grpo.train import (
    dynamic_sampling,
    group_advantages,
    group_index,
    scored_advantages,
    select_groups,
    zero_variance_groups,
)

torch.set_num_threads(1)
EPS = 1e-4
# Two groups of two: {1, 0} and {0.5, 0.5}.
REWARDS = [1.0, 0.0, 0.5, 0.5]


def close(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float32), atol=1e-6, rtol=0)


def test_group_scale():
    # group {1, 0}: mean 0.5, unbiased var = (0.25 + 0.25) / (2 - 1) = 0.5, std = sqrt(0.5)
    # A = +-0.5 / (sqrt(0.5) + 1e-4) = +-0.707006795
    # group {0.5, 0.5}: std 0, A = 0 / (0 + 1e-4) = 0
    a = 0.5 / (math.sqrt(0.5) + EPS)
    close(group_advantages(REWARDS, 2, "group"), [a, -a, 0.0, 0.0])


def test_batch_scale():
    # group means stay 0.5, 0.5; batch std over {1, 0, .5, .5}: mean .5, var = (.25 + .25) / 3 = 1/6
    # A = +-0.5 / (sqrt(1/6) + 1e-4) = +-1.224444945
    a = 0.5 / (math.sqrt(1 / 6) + EPS)
    close(group_advantages(REWARDS, 2, "batch"), [a, -a, 0.0, 0.0])


def test_no_scale_is_mean_centred_only():
    close(group_advantages(REWARDS, 2, "none"), [0.5, -0.5, 0.0, 0.0])


def test_group_ids_in_any_order_and_unequal_sizes():
    # a = {3, 0, 0}: mean 1, var = (4 + 1 + 1) / 2 = 3 -> A = (2, -1, -1) / (sqrt(3) + 1e-4)
    # b = {7}: a single reward has std 0 and advantage 0 (TRL's convention)
    s = math.sqrt(3) + EPS
    close(group_advantages([3.0, 7.0, 0.0, 0.0], ["a", "b", "a", "a"], "group"), [2 / s, 0.0, -1 / s, -1 / s])
    assert group_index(["x", "y", "x"], 3).tolist() == [0, 1, 0]
    assert group_index(3, 6).tolist() == [0, 0, 0, 1, 1, 1]


def test_ids_and_size_agree():
    ids = ["g0", "g0", "g1", "g1"]
    for scale in ("group", "batch", "none"):
        torch.testing.assert_close(group_advantages(REWARDS, ids, scale), group_advantages(REWARDS, 2, scale))


@pytest.mark.parametrize(
    ("rewards", "groups", "match"),
    [
        ([1.0, 2.0, 3.0], 2, "do not split"),
        ([1.0, 2.0], ["a"], "one group id per reward"),
        ([1.0, float("nan")], 2, "finite"),
        ([[1.0, 2.0]], 2, r"\[N\]"),
    ],
)
def test_bad_inputs_say_how_to_fix(rewards, groups, match):
    with pytest.raises(ValueError, match=match):
        group_advantages(rewards, groups)


def test_zero_variance_groups():
    assert zero_variance_groups([1.0, 1.0, 0.0, 1.0], 2).tolist() == [True, True, False, False]
    assert zero_variance_groups(REWARDS, ["a", "a", "b", "b"]).tolist() == [False, False, True, True]


def groups_of(*rewards):
    return [[SimpleNamespace(reward=r) for r in g] for g in rewards]


def test_dynamic_sampling_drops_flat_groups():
    groups = groups_of([1, 0], [1, 1], [0, 0], [0.2, 0.7], [1])  # flat, flat and a singleton go
    kept, dropped = dynamic_sampling(groups)
    assert dropped == 3
    assert [[t.reward for t in g] for g in kept] == [[1, 0], [0.2, 0.7]]


def test_a_reward_that_failed_is_unknown_not_zero():
    """A judge timed out on the third member (scored 0 by `on_error`): it gets advantage 0, the others' advantages
    are those of the group without it, and a group flat but for it is not informative."""
    failed = {"accuracy": "judge timed out"}
    trajs = [SimpleNamespace(reward=r, reward_errors=e) for r, e in ((1.0, {}), (0.5, {}), (0.0, failed), (0.5, {}))]
    trajs += [SimpleNamespace(reward=r, reward_errors={}) for r in (0.2, 0.4)]
    ids = ["a", "a", "a", "a", "b", "b"]
    adv = scored_advantages(trajs, ids)
    expected = group_advantages([1.0, 0.5, 0.5, 0.2, 0.4], ["a", "a", "a", "b", "b"]).tolist()
    assert adv == pytest.approx([*expected[:2], 0.0, *expected[2:]])
    assert adv[:4] != pytest.approx(group_advantages([1.0, 0.5, 0.0, 0.5], 4).tolist())  # what it was
    flat_but_failed = [SimpleNamespace(reward=r, reward_errors=e) for r, e in ((1.0, {}), (0.0, failed), (1.0, {}))]
    assert dynamic_sampling([flat_but_failed, trajs[:4]]) == ([trajs[:4]], 1)
    assert scored_advantages([trajs[2]], ["a"]) == [0.0]  # nothing scored: no gradient, no error


def test_select_groups_reports_how_many_more_are_needed():
    groups = groups_of([1, 0], [1, 1], [0, 1])
    kept, dropped, needed = select_groups(groups, target_groups=4)
    assert (len(kept), dropped, needed) == (2, 1, 2)
    sel = select_groups(groups + groups_of([0.5, 0.0], [0.1, 0.2]), target_groups=3)
    assert [[t.reward for t in g] for g in sel.groups] == [[1, 0], [0, 1], [0.5, 0.0]]  # surplus left out
    assert (sel.dropped, sel.needed) == (1, 0)
    with pytest.raises(ValueError, match="at least one group"):
        select_groups(groups, 0)
