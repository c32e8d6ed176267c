"""agent-grpo: train vision-language models to think with images (multi-turn tool rollouts + GRPO).

The torch-free core is re-exported here: the data model, the tool and environment APIs, rubrics.
Engines, rollouts and training live in `agent_grpo.rollout`, `agent_grpo.train` and `agent_grpo.recipes`.
"""

from agent_grpo.boxes import Box, CoordFrame
from agent_grpo.budget import BudgetUsage, VisualBudget
from agent_grpo.content import ImagePart, Message, TextPart
from agent_grpo.envs.api import Environment, Episode
from agent_grpo.errors import (
    AgentGrpoError,
    BatchError,
    ConfigError,
    ImageError,
    PluginError,
    StoreError,
    ToolError,
)
from agent_grpo.parsing import ParsedTurn, parse_turn
from agent_grpo.rewards.rubric import RewardFn, Rubric, metric, reward
from agent_grpo.tools.api import Tool, ToolContext, ToolImage, ToolManifest, ToolOutput, tool
from agent_grpo.trajectory import (
    Segment,
    Task,
    Termination,
    ToolCall,
    ToolErrorKind,
    ToolResult,
    Trajectory,
    Turn,
)

# The one source of the version: pyproject.toml reads it from here (CHANGELOG.md says what changed).
__version__ = "0.1.0"

__all__ = [
    "AgentGrpoError", "BatchError", "Box", "BudgetUsage", "ConfigError", "CoordFrame", "Environment", "Episode",
    "ImageError", "ImagePart", "Message", "ParsedTurn", "PluginError", "RewardFn", "Rubric", "Segment", "StoreError",
    "Task", "Termination", "TextPart", "Tool", "ToolCall", "ToolContext", "ToolError", "ToolErrorKind", "ToolImage",
    "ToolManifest", "ToolOutput", "ToolResult", "Trajectory", "Turn", "VisualBudget", "metric", "parse_turn",
    "reward", "tool",
]
