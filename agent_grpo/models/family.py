"""Model families: what differs between the Qwen-VL generations we train, in one small record each.

Everything else (chat rendering, `<|image_pad|>` expansion, `mm_token_type_ids`, 3-D mRoPE positions from the
model's own `get_rope_index`, the logprob head) is shared. A family names:

- the transformers model class and the stock processor class written into saved checkpoints;
- the vision geometry: `patch_size` (Qwen2/2.5-VL 14, Qwen3-VL 16) and `merge_size` (2), so one visual token
  covers `token_side` x `token_side` pixels (28 or 32);
- our chat template with tools for it (`chat_template.jinja`, `chat_template_qwen3_vl.jinja`);
- how its rotary frequencies split over (time, height, width): contiguous blocks (Qwen2/2.5-VL) or interleaved
  (Qwen3-VL), which decides how `mrope_section` is scaled for a small head dimension.

Qwen3-VL, checked against transformers 5.19 (`models/qwen3_vl/modeling_qwen3_vl.py`) and the 8B-Instruct config:
its `get_rope_index` takes the same arguments as Qwen2.5-VL's (`input_ids`, `mm_token_type_ids`,
`image_grid_thw`, `attention_mask`) and numbers an image run from the current position (t fixed, h and w
counting rows and columns), the next text starting at `max(h, w)` after it; the text model reads a 4-row
position tensor as (text, t, h, w) as Qwen2.5-VL's does. The rotary embedding always interleaves the sections
(`mrope_interleaved` in the config is informational): frequency i goes to height if i % 3 == 1 and i < 3 * h,
to width if i % 3 == 2 and i < 3 * w, else to time. DeepStack features (vision layers named by
`deepstack_visual_indexes`) are added to the first decoder layers' hidden states at the image tokens inside
the model's forward: nothing to pass. Video timestamps are not used (images only).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import transformers

_HERE = Path(__file__).parent


@dataclass(frozen=True)
class ModelFamily:
    name: str  # config.json `model_type`
    title: str
    model_class: str  # a transformers class name
    processor_class: str  # the stock processor, written as `processor_class` in saved checkpoints
    patch_size: int  # vision patch side, pixels
    merge_size: int  # patches merged per side into one visual token
    template_file: str  # our chat template with tools, in agent_grpo/models/
    mrope_interleaved: bool  # rotary sections interleaved (Qwen3-VL) or in contiguous blocks

    @property
    def token_side(self) -> int:
        """Pixels per side of one visual token (patch x merge): 28 for Qwen2/2.5-VL, 32 for Qwen3-VL."""
        return self.patch_size * self.merge_size

    @property
    def model_cls(self) -> type:
        return getattr(transformers, self.model_class)

    def chat_template(self) -> str:
        """Our chat template with tools for this family."""
        return _read_template(self.template_file)

    def mrope_section(self, head_dim: int) -> list[int]:
        """[time, height, width] rotary frequencies for `head_dim`, scaled from the family's real split.

        Qwen2.5-VL-7B: [16, 24, 24] of 64 (contiguous: a quarter for time). Qwen3-VL-8B: [24, 20, 20] of 64
        (interleaved: height and width get 5/16 each, time the rest, so `3 * h <= head_dim / 2`).
        """
        half = head_dim // 2
        if head_dim % 2 or half < 3:
            raise ValueError(f"head_dim must be even and at least 6 for mRoPE, got {head_dim}")
        if self.mrope_interleaved:
            h = max(1, half * 5 // 16)
            return [half - 2 * h, h, h]
        t = max(1, half // 4)
        h = (half - t) // 2
        return [t, h, half - t - h]


QWEN2_5_VL = ModelFamily(
    name="qwen2_5_vl",
    title="Qwen2.5-VL",
    model_class="Qwen2_5_VLForConditionalGeneration",
    processor_class="Qwen2_5_VLProcessor",
    patch_size=14,
    merge_size=2,
    template_file="chat_template.jinja",
    mrope_interleaved=False,
)
QWEN2_VL = ModelFamily(
    name="qwen2_vl",
    title="Qwen2-VL",
    model_class="Qwen2VLForConditionalGeneration",
    processor_class="Qwen2VLProcessor",
    patch_size=14,
    merge_size=2,
    template_file="chat_template.jinja",
    mrope_interleaved=False,
)
QWEN3_VL = ModelFamily(
    name="qwen3_vl",
    title="Qwen3-VL",
    model_class="Qwen3VLForConditionalGeneration",
    processor_class="Qwen3VLProcessor",
    patch_size=16,
    merge_size=2,
    template_file="chat_template_qwen3_vl.jinja",
    mrope_interleaved=True,
)

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (QWEN2_5_VL, QWEN2_VL, QWEN3_VL)}


def family_named(name: str) -> ModelFamily:
    """The family of a `model_type` (`qwen2_5_vl`, `qwen2_vl`, `qwen3_vl`); a clear error for anything else."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        supported = ", ".join(sorted(FAMILIES))
        titles = ", ".join(FAMILIES[k].title for k in sorted(FAMILIES))
        raise ValueError(
            f"model family {name!r} is not supported; supported families are {supported} ({titles})"
        ) from None


def family_of_config(config_path: str | Path) -> ModelFamily:
    """The family of a checkpoint's config.json (file or folder)."""
    path = Path(config_path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(f"{path} does not exist: is {path.parent} a model checkpoint folder?")
    return family_named(json.loads(path.read_text()).get("model_type"))


def family_of_model(model) -> ModelFamily:
    """The family of a built model (or its PEFT wrapper), by its config's `model_type`."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return family_named(model.config.model_type)


@cache
def _read_template(file_name: str) -> str:
    return (_HERE / file_name).read_text(encoding="utf-8")
