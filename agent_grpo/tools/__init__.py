"""Tool plugin API: define tools with `@tool`, discover them with `load_tools`."""

from agent_grpo.tools.api import (
    Region,
    Tool,
    ToolContext,
    ToolImage,
    ToolManifest,
    ToolOutput,
    check_output,
    tool,
)
from agent_grpo.tools.isolation import ToolWorkers
from agent_grpo.tools.registry import ToolRegistry, load_tools
from agent_grpo.tools.runner import ToolJob, ToolRun, run_tool_calls

__all__ = [
    "Region", "Tool", "ToolContext", "ToolImage", "ToolJob", "ToolManifest", "ToolOutput", "ToolRegistry",
    "ToolRun", "ToolWorkers", "check_output", "load_tools", "run_tool_calls", "tool",
]
