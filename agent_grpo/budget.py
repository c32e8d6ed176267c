"""The visual budget: limits on turns and images, enforced before the engine would fail.

Images over `max_pixels_per_image` are downscaled (never dropped); when images or visual tokens are
used up, the next image-producing tool call gets a budget observation and the model must answer.
"""

from __future__ import annotations

from PIL import Image
from pydantic import BaseModel, Field, model_validator

from agent_grpo.images import FACTOR, model_view, visual_tokens


class VisualBudget(BaseModel):
    """Per-trajectory limits. Visual tokens are counted with the Qwen-VL resize rule."""

    max_turns: int = Field(default=4, ge=1, description="model turns, the answering turn included")
    max_images: int = Field(default=6, ge=1, description="images in the conversation, prompt images included")
    max_pixels_per_image: int = Field(
        default=224 * 224,
        ge=FACTOR * FACTOR,
        description="pixels of the model's view of one image; stored images keep full resolution",
    )
    max_pixels_per_task_image: int | None = Field(
        default=None,
        ge=FACTOR * FACTOR,
        description="view of the task's own images, if smaller than tool images' (None: max_pixels_per_image); "
        "a small full view with full-size zooms is what makes zooming worth it",
    )
    min_pixels_per_image: int = Field(default=4 * FACTOR * FACTOR, ge=FACTOR * FACTOR)
    max_visual_tokens: int = Field(default=1024, ge=1, description="image tokens over the whole trajectory")
    token_side: int = Field(
        default=FACTOR, ge=1,
        description="pixels per side of one visual token: 28 for Qwen2/2.5-VL, 32 for Qwen3-VL (the rollout "
        "driver sets the model's, see `for_model`)",
    )

    @model_validator(mode="after")
    def _check(self) -> VisualBudget:
        if self.min_pixels_per_image > min(self.max_pixels_per_image, self.max_pixels_per_task_image or 10**12):
            raise ValueError(
                f"min_pixels_per_image ({self.min_pixels_per_image}) must not exceed "
                f"max_pixels_per_image ({self.max_pixels_per_image})"
            )
        return self

    def max_pixels(self, source: str = "tool") -> int:
        """Pixel limit of the model's view of an image from `source` ("task" or "tool")."""
        if source == "task" and self.max_pixels_per_task_image is not None:
            return self.max_pixels_per_task_image
        return self.max_pixels_per_image

    def tokens_for(self, width: int, height: int, source: str = "tool") -> int:
        return visual_tokens(width, height, self.min_pixels_per_image, self.max_pixels(source), self.token_side)

    def view(self, image: Image.Image, source: str = "tool") -> Image.Image:
        """The model's view of a stored image: the one place images are shrunk for the model."""
        return model_view(image, self.min_pixels_per_image, self.max_pixels(source), self.token_side)

    def for_model(self, token_side: int, min_pixels: int | None = None) -> VisualBudget:
        """This budget counted in a model's visual tokens, so that views are never resized again by its processor.

        `token_side`: the model's pixels per token side (`ChatFormat.token_side`); `min_pixels`: its image
        processor's minimum (Qwen3-VL's is 256 x 256 = 64 tokens), which every image is enlarged to anyway:
        it raises `min_pixels_per_image`, and the view limits where they are lower, so the tokens counted are
        the tokens shown. Returns `self` when nothing changes (Qwen2.5-VL with its default minimum)."""
        floor = max(self.min_pixels_per_image, min_pixels or 0)
        task = self.max_pixels_per_task_image
        update = {
            "token_side": token_side,
            "min_pixels_per_image": floor,
            "max_pixels_per_image": max(self.max_pixels_per_image, floor),
            "max_pixels_per_task_image": None if task is None else max(task, floor),
        }
        if all(getattr(self, k) == v for k, v in update.items()):
            return self
        return self.model_copy(update=update)


class BudgetUsage(BaseModel):
    """What one trajectory has spent so far."""

    turns: int = 0
    images: int = 0
    visual_tokens: int = 0

    def can_add_image(self, budget: VisualBudget, width: int, height: int, source: str = "tool") -> str | None:
        """None if an image of this size fits, else the reason it does not (shown to the model)."""
        if self.images + 1 > budget.max_images:
            return f"image budget exhausted ({budget.max_images} images per trajectory)"
        tokens = budget.tokens_for(width, height, source)
        if self.visual_tokens + tokens > budget.max_visual_tokens:
            left = budget.max_visual_tokens - self.visual_tokens
            return f"visual token budget exhausted ({left} of {budget.max_visual_tokens} left, image needs {tokens})"
        return None

    def add_image(self, budget: VisualBudget, width: int, height: int, source: str = "tool") -> None:
        self.images += 1
        self.visual_tokens += budget.tokens_for(width, height, source)

    def images_left(self, budget: VisualBudget) -> int:
        return budget.max_images - self.images
