"""The mixed multi-turn workload of bench/async_rollout.py (a module, so tool workers can import its tool).

- `slow_zoom`: the built-in zoom, after a pause of 50-200 ms (fixed by the box, so every run waits the same):
  tool latency as a real tool (a detector, a remote call) would add it.
- `SlowZoomEnv`: one 448 px noise image per task, `slow_zoom` as its only tool.
- `plan(key)`: what trajectory `key` writes: 1-4 zooms, then an answer; each turn's thinking 4-120 words
  (reply lengths differ several-fold), all fixed by the trajectory id.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from agent_grpo.boxes import CoordFrame
from agent_grpo.budget import VisualBudget
from agent_grpo.content import ImagePart
from agent_grpo.envs import Environment
from agent_grpo.rewards import accuracy, format_reward
from agent_grpo.rewards.rubric import Rubric
from agent_grpo.tools.api import ToolContext, ToolOutput, tool
from agent_grpo.trajectory import Task


class SlowZoomArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bbox_2d: list[float] = Field(min_length=4, max_length=4)
    image: int = 0


def latency_s(box: list[float]) -> float:
    digest = hashlib.blake2b(repr([round(v) for v in box]).encode(), digest_size=4).digest()
    return 0.05 + 0.15 * int.from_bytes(digest, "little") / 2**32  # 50-200 ms


@tool(box_frame=CoordFrame.PIXELS, returns_images=True, timeout_s=5.0)
def slow_zoom(args: SlowZoomArgs, ctx: ToolContext) -> ToolOutput:
    """Zoom into a region of an image (slowly)."""
    from agent_grpo_tools.zoom import ZoomInArgs, zoom_in

    time.sleep(latency_s(args.bbox_2d))
    return zoom_in.fn(ZoomInArgs(bbox_2d=args.bbox_2d, image=args.image), ctx)


class SlowZoomEnv(Environment):
    name = "slow-zoom-bench"
    tool_names = ("slow_zoom",)

    def load_tasks(self, split="train", n=None, seed=0):
        rng = np.random.default_rng(seed)
        return [Task(id=f"{split}-{i}", question="Which digit?", answer="3", split=split,
                     images=[ImagePart.from_pil(Image.fromarray(rng.integers(0, 255, (448, 448, 3), dtype=np.uint8)))])
                for i in range(n or 4)]

    def default_budget(self):
        return VisualBudget(max_turns=6, max_images=6, max_pixels_per_image=112 * 112, max_visual_tokens=1024)

    def default_rubric(self):
        return Rubric([format_reward.with_weight(0.2), accuracy("exact", weight=0.8)])


WORDS = "the digit is small so I look at the region again".split()


def plan(key: str, short: bool = False) -> list[str]:
    """The turns trajectory `key` writes: zoom calls (each on the newest image), then an answer."""
    rng = np.random.default_rng(int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little"))
    zooms = int(rng.integers(1, 5))
    turns = []
    for z in range(zooms + 1):
        words = int(rng.integers(2, 8)) if short else int(rng.integers(4, 121))
        think = " ".join(WORDS[i % len(WORDS)] for i in range(words))
        if z == zooms:
            turns.append(f"<think>{think}</think><answer>3</answer>")
            break
        side = 224 >> z if z < 3 else 40
        x, y = (int(v) for v in rng.integers(0, 448 - side, 2)) if z == 0 else (4, 4)
        turns.append(f'<think>{think}</think><tool_call>{{"name": "slow_zoom", "arguments": '
                     f'{{"bbox_2d": [{x}, {y}, {x + side}, {y + side}], "image": {z}}}}}</tool_call>')
    return turns


def turn_text(key: str, turn: int, short: bool = False) -> str:
    turns = plan(key, short)
    return turns[min(turn, len(turns) - 1)]
