"""Multi-turn, multi-image zoom trajectories through the real tiny model, shared by the rollout and
trainer tests (`tests/` is on pytest's path; a uniquely named module, since `conftest` names collide).

- `ZoomEnv`: one 448 px noise image, the built-in zoom_in tool, exact-match answer.
- `zoom_call`, `TWO_ZOOMS`: scripted assistant turns (a zoom, a zoom into the zoom, an answer).
- `ForceScript`: makes the real model emit scripted text, so trajectories are known in advance.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from agent_grpo.budget import VisualBudget
from agent_grpo.content import ImagePart
from agent_grpo.envs import Environment
from agent_grpo.models.chat import ChatFormat
from agent_grpo.rewards import accuracy, format_reward
from agent_grpo.rewards.rubric import Rubric
from agent_grpo.trajectory import Task


class ZoomEnv(Environment):
    """Find the digit: one 448 px image, the built-in zoom_in tool, answer exact match."""

    name = "zoom-test"
    tool_names = ("zoom_in",)

    def load_tasks(self, split="train", n=None, seed=0):
        rng = np.random.default_rng(seed)
        tasks = []
        for i in range(n or 4):
            pixels = rng.integers(0, 255, size=(448, 448, 3), dtype=np.uint8)
            tasks.append(Task(id=f"{split}-{i}", question="Which digit?", answer=str(i % 10),
                              images=[ImagePart.from_pil(Image.fromarray(pixels))], split=split))
        return tasks

    def default_budget(self):
        return VisualBudget(max_turns=4, max_images=4, max_pixels_per_image=112 * 112, max_visual_tokens=256)

    def default_rubric(self):
        return Rubric([format_reward.with_weight(0.2), accuracy("exact", weight=0.8)])


def zoom_call(box, image=0) -> str:
    return (f'<think>look closer</think><tool_call>{{"name": "zoom_in", '
            f'"arguments": {{"bbox_2d": {box}, "image": {image}}}}}</tool_call>')


TWO_ZOOMS = [zoom_call([0, 0, 224, 224]), zoom_call([56, 56, 168, 168], image=1), "<think>it is</think><answer>3</answer>"]


class ForceScript:
    """HF logits processor factory: rows follow scripted text (per trajectory key and turn).

    The real model still runs every step and logprobs come from its raw logits; only the choice of
    token is scripted.
    """

    def __init__(self, chat: ChatFormat, script):
        self.chat = chat
        self.script = script  # (key, turn) -> text

    def __call__(self, requests, width):
        from transformers import LogitsProcessorList

        forced = [self.chat.tokenizer.encode(self.script(r.key, r.turn), add_special_tokens=False) for r in requests]
        end = self.chat.tokenizer.convert_tokens_to_ids("<|im_end|>")

        def force(input_ids, scores):
            step = input_ids.shape[1] - width
            out = torch.full_like(scores, float("-inf"))
            for b, ids in enumerate(forced):
                out[b, ids[step] if step < len(ids) else end] = 0.0
            return out

        return LogitsProcessorList([force])
