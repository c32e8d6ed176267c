"""Tools that misbehave on purpose, at module level so tool workers can import them by name.

Shared by the tool-isolation tests and the rollout fuzz test (`tests/` is on pytest's path).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict

from agent_grpo.tools.api import ToolContext, ToolImage, ToolOutput, tool
from agent_grpo.tools.registry import ToolRegistry

HANG_S = 600.0  # far past any limit used in tests


class NoArgs(BaseModel):
    model_config = ConfigDict(extra="ignore")


class EchoArgs(BaseModel):
    text: str = "hi"


@tool(returns_images=False, timeout_s=0.5)
def hang(args: NoArgs, ctx: ToolContext) -> ToolOutput:
    """Sleeps far past its time-out (test tool)."""
    time.sleep(HANG_S)
    return ToolOutput(text="late")


@tool(returns_images=False, timeout_s=0.5)
def hog_gil(args: NoArgs, ctx: ToolContext) -> ToolOutput:
    """A C-level loop that never releases the GIL (test tool)."""
    return ToolOutput(text=str(sum(range(10**12))))


@tool(returns_images=False)
def exits(args: NoArgs, ctx: ToolContext) -> ToolOutput:
    """Calls sys.exit (test tool)."""
    sys.exit(3)


@tool(returns_images=False)
def interrupts(args: NoArgs, ctx: ToolContext) -> ToolOutput:
    """Raises KeyboardInterrupt (test tool)."""
    raise KeyboardInterrupt


@tool(returns_images=False)
def dies(args: NoArgs, ctx: ToolContext) -> ToolOutput:
    """Kills its own process (test tool)."""
    os._exit(1)


@tool(returns_images=False, timeout_s=5.0)
def echo(args: EchoArgs, ctx: ToolContext) -> ToolOutput:
    """Says its text back, counting calls in its state (test tool)."""
    ctx.state["n"] = ctx.state.get("n", 0) + 1
    return ToolOutput(text=f"{args.text} #{ctx.state['n']}", metrics={"n": ctx.state["n"]})


@tool()
def numpy_image(args: NoArgs, ctx: ToolContext) -> ToolOutput:
    """Returns a numpy array as its image (test tool)."""
    return ToolOutput.model_construct(text=None, images=[ToolImage(image=np.zeros((8, 8, 3), np.uint8), parent=0)],
                                      metrics={})


@tool()
def empty_image(args: NoArgs, ctx: ToolContext) -> ToolOutput:
    """Returns a 0x0 image (test tool)."""
    return ToolOutput(images=[ToolImage(image=Image.new("RGB", (0, 0)), parent=0)])


@tool()
def sliver_image(args: NoArgs, ctx: ToolContext) -> ToolOutput:
    """Returns a 500x1 image (test tool)."""
    return ToolOutput(images=[ToolImage(image=Image.new("RGB", (500, 1)), parent=0)])


@tool()
def orphan_image(args: NoArgs, ctx: ToolContext) -> ToolOutput:
    """Returns an image whose parent does not exist (test tool)."""
    return ToolOutput(images=[ToolImage(image=Image.new("RGB", (32, 32)), parent=99)])


@tool()
def odd_mode_image(args: NoArgs, ctx: ToolContext) -> ToolOutput:
    """Returns a transparent 16-bit-ish image (test tool): converted, not refused."""
    return ToolOutput(images=[ToolImage(image=Image.new("RGBA", (40, 30), (255, 0, 0, 0)), parent=0)])


HOSTILE = (hang, hog_gil, exits, interrupts, dies, echo, numpy_image, empty_image, sliver_image, orphan_image,
           odd_mode_image)


def hostile_registry() -> ToolRegistry:
    return ToolRegistry(HOSTILE)
