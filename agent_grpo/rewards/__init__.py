"""Rewards: rubric composition, format, accuracy, tool-use rewards and reward-hacking metrics.

The LLM judge (`agent_grpo.rewards.judge`: `JudgeConfig`, `judge_accuracy`) is imported from its module,
so importing the rewards never loads the HTTP client.
"""

from agent_grpo.rewards.accuracy import (
    COMPARATORS,
    accuracy,
    box_iou,
    exact_match,
    math_equivalent,
    normalize_answer,
    numeric,
    parse_box,
    parse_number,
)
from agent_grpo.rewards.choice import choice_letter, extract_choice
from agent_grpo.rewards.format import format_reward, strict_format_reward
from agent_grpo.rewards.hacking import (
    HACKING_METRICS,
    answer_before_looking,
    empty_answer,
    tool_regions,
    zoom_covers_image,
    zoom_precision,
)
from agent_grpo.rewards.rubric import RewardError, RewardFn, Rubric, metric, reward
from agent_grpo.rewards.tool_use import (
    conditional_tool_bonus,
    deepeyes_rubric,
    default_rubric,
    failed_call_penalty,
    fewest_calls_bonus,
    successful_calls,
    tool_call_cost,
)

__all__ = [
    "COMPARATORS",
    "HACKING_METRICS",
    "RewardError",
    "RewardFn",
    "Rubric",
    "accuracy",
    "answer_before_looking",
    "box_iou",
    "choice_letter",
    "conditional_tool_bonus",
    "deepeyes_rubric",
    "default_rubric",
    "empty_answer",
    "exact_match",
    "extract_choice",
    "failed_call_penalty",
    "fewest_calls_bonus",
    "format_reward",
    "math_equivalent",
    "metric",
    "normalize_answer",
    "numeric",
    "parse_box",
    "parse_number",
    "reward",
    "strict_format_reward",
    "successful_calls",
    "tool_call_cost",
    "tool_regions",
    "zoom_covers_image",
    "zoom_precision",
]
