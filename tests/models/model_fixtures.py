"""Helpers shared by tests/models (a uniquely named module: `conftest` names collide across test folders)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

QWEN_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "qwen2_5_vl_7b_instruct"
# A tool schema as chat templates receive it (OpenAI function format).
ZOOM = {
    "type": "function",
    "function": {
        "name": "zoom_in",
        "description": "Zoom into a region of an image.",
        "parameters": {
            "type": "object",
            "properties": {"bbox_2d": {"type": "array", "items": {"type": "number"}}},
            "required": ["bbox_2d"],
        },
    },
}


def make_image(width: int, height: int, colour: str = "red") -> Image.Image:
    image = Image.new("RGB", (width, height), "white")
    image.paste(Image.new("RGB", (width // 2, height // 2), colour), (width // 4, height // 4))
    return image
