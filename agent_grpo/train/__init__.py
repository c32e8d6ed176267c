"""GRPO training components: advantages, dynamic sampling, the loss."""

from agent_grpo.train.advantages import (
    GroupSelection,
    dynamic_sampling,
    group_advantages,
    group_index,
    scored_advantages,
    select_groups,
    zero_variance_groups,
)
from agent_grpo.train.loss import (
    aggregate_loss,
    grpo_loss,
    importance_weights,
    mask_truncated_rows,
    per_token_loss,
)

__all__ = [
    "GroupSelection", "aggregate_loss", "dynamic_sampling", "group_advantages", "group_index", "grpo_loss",
    "importance_weights", "mask_truncated_rows", "per_token_loss", "scored_advantages", "select_groups",
    "zero_variance_groups",
]
