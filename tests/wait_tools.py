"""A tool with latency, at module level so tool workers can import it (shared by the scheduler tests)."""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict

from agent_grpo.tools.api import ToolContext, ToolOutput, tool
from agent_grpo.tools.registry import ToolRegistry


class WaitArgs(BaseModel):
    model_config = ConfigDict(extra="ignore")
    seconds: float = 0.1


@tool(returns_images=False, timeout_s=0.5)
def wait(args: WaitArgs, ctx: ToolContext) -> ToolOutput:
    """Sleeps `seconds`, then says when it started and ended (test tool)."""
    start = time.time()
    time.sleep(args.seconds)
    return ToolOutput(text="waited", metrics={"start": start, "end": time.time()})


def wait_registry() -> ToolRegistry:
    return ToolRegistry([wait])


def wait_call(seconds: float) -> str:
    return f'<think>wait</think><tool_call>{{"name": "wait", "arguments": {{"seconds": {seconds}}}}}</tool_call>'
