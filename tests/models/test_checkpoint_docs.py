"""The README's "Loading a checkpoint elsewhere" snippet works on a checkpoint folder as the recipes save it."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from PIL import Image
from transformers import AutoProcessor

from agent_grpo.models import build_tiny_model
from agent_grpo.models.chat import tools_chat_template

README = Path(__file__).resolve().parents[2] / "README.md"


def snippet() -> str:
    text = README.read_text()
    match = re.search(r"<!-- load-checkpoint -->\n```python\n(.*?)```", text, re.S)
    assert match, "README lost its load-checkpoint snippet"
    return match.group(1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "model"
    build_tiny_model(out)
    return out


def test_the_documented_snippet_loads_a_working_processor(checkpoint):
    code = snippet()
    assert '"runs/grpo/checkpoints/step_000100/model"' in code
    scope: dict = {}
    exec(code.replace('"runs/grpo/checkpoints/step_000100/model"', repr(str(checkpoint))), scope)  # noqa: S102
    processor, tokenizer, image_processor = scope["processor"], scope["tokenizer"], scope["image_processor"]
    assert scope["model"].config.model_type == "qwen2_5_vl"
    assert processor.chat_template == tools_chat_template() == tokenizer.chat_template
    image = Image.new("RGB", (112, 112), "red")
    batch = processor(text=["<|vision_start|><|image_pad|><|vision_end|>look"], images=[image], return_tensors="pt")
    grid = batch["image_grid_thw"][0]
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((batch["input_ids"] == pad).sum()) == int(grid.prod()) // 4  # one token per 2 x 2 patches
    assert (image_processor(images=[image], return_tensors="pt")["pixel_values"] == batch["pixel_values"]).all()


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed here")
def test_without_torchvision_auto_processor_is_not_the_way_as_documented(checkpoint):
    try:
        loaded = AutoProcessor.from_pretrained(checkpoint)
    except ImportError as e:
        assert "Torchvision" in str(e)
    else:
        assert not hasattr(loaded, "image_processor")  # the bare tokenizer
