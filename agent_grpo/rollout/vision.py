"""Vision inputs computed once per distinct image.

A group's G trajectories share their task image, and every turn repeats the images before it, so
the same picture is resized and patchified many times per step unless it is cached. Keys are the
image's content hash and its source (task images and tool images may have different view limits).

Views also go through the process-wide, byte-bounded `agent_grpo.pixels.VIEWS` cache, so an image seen
again in a later step (an SFT demonstration of the next epoch) is not decoded and resized again. Patches
are kept per instance only: an instance lives for one rollout or one training step.
"""

from __future__ import annotations

import torch
from PIL import Image

from agent_grpo import pixels
from agent_grpo.budget import VisualBudget
from agent_grpo.content import ImagePart


class VisionCache:
    def __init__(self, chat, budget: VisualBudget):
        self.chat = chat
        # Views in the model's visual tokens (Qwen3-VL: 32 px), so its processor never resizes them again.
        self.budget = budget = budget.for_model(chat.token_side, chat.min_pixels)
        self._limits = (
            budget.min_pixels_per_image, budget.max_pixels("task"), budget.max_pixels("tool"), budget.token_side
        )
        self._patches: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def view(self, part: ImagePart) -> Image.Image:
        key = (part.sha256, part.source, self._limits)
        return pixels.VIEWS.get(key, lambda: self.budget.view(part.pil, part.source))

    def grid(self, part: ImagePart) -> torch.Tensor:
        """`[3]` (t, h, w) patch grid of the image's view."""
        return self._encoded(part)[1]

    def num_tokens(self, part: ImagePart) -> int:
        return int(self.grid(part).prod()) // (self.chat.merge_size**2)

    def inputs(self, parts: list[ImagePart]) -> dict[str, torch.Tensor]:
        """`pixel_values` [P, D] and `image_grid_thw` [I, 3] for these images, in order."""
        encoded = [self._encoded(p) for p in parts]
        return {
            "pixel_values": torch.cat([e[0] for e in encoded]),
            "image_grid_thw": torch.stack([e[1] for e in encoded]),
        }

    def _encoded(self, part: ImagePart) -> tuple[torch.Tensor, torch.Tensor]:
        key = (part.sha256, part.source)
        if key not in self._patches:
            out = self.chat.image_inputs([self.view(part)])
            self._patches[key] = (out["pixel_values"], out["image_grid_thw"][0])
        return self._patches[key]
