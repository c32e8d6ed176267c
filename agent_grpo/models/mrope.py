"""Multimodal rotary positions (mRoPE) for Qwen2/2.5/3-VL in transformers 5.19: what to pass.

Findings from `transformers/models/qwen2_5_vl/modeling_qwen2_5_vl.py` (5.19.0), checked by
tests/models/test_mrope.py:

- `Qwen2_5_VLModel.get_rope_index(input_ids, mm_token_type_ids, image_grid_thw=None,
  video_grid_thw=None, second_per_grid_ts=None, attention_mask=None)` returns
  `(position_ids [3, B, T], rope_deltas [B, 1])`. `mm_token_type_ids` [B, T] is 0 for text, 1 for
  image tokens, 2 for video tokens. Rows are grouped into runs of equal type; each image run takes
  the next row of `image_grid_thw`, which is consumed across the whole batch in order (row 0's images,
  then row 1's, ...: the same order as `pixel_values`). Two images must therefore never touch: our
  template always puts `<|vision_start|>`/`<|vision_end|>` (text) around each.
  With `attention_mask`, masked tokens are dropped before numbering, so left or right padding does not
  shift positions; padded slots get position 0. Positions restart at 0 at each row's first real token.
- `forward(..., position_ids=None)` computes 3-D positions only if `input_ids`,
  `mm_token_type_ids` and `image_grid_thw` (or `video_grid_thw`) are all given. Otherwise, with no
  cache, `position_ids` stays None and the text model uses `arange(T)` for all three axes, ignoring
  `attention_mask`: silently 1-D positions (the image tokens get text positions). No error, no warning.
- The model caches `model.model.rope_deltas` between calls (for decoding). A forward with
  `past_key_values=None` and the three inputs above recomputes it, so a training forward after
  `generate` is safe as long as `mm_token_type_ids` is passed.
- `generate(...)` needs `mm_token_type_ids` too (with `attention_mask`, `pixel_values`,
  `image_grid_thw`): `_prepare_position_ids_for_generation` builds [4, B, T] position ids (row 0: text
  positions from the attention mask's cumsum, rows 1-3: `get_rope_index`), extends them by +1 per new
  token, and appends zeros to `mm_token_type_ids`. Without it, generation runs on 1-D positions.
- Passing explicit `position_ids` [3, B, T] (from `get_rope_index`) to `forward` bypasses the cached
  state entirely; `multimodal_position_ids` below does that, and it works for text-only rows too.
- Qwen3-VL (`modeling_qwen3_vl.py`, tests/models/test_qwen3_vl.py): the same `get_rope_index` arguments and
  findings; an image run at position p gets t = p, h = p + row, w = p + column, and text resumes at
  p + max(rows, columns). Its rotary embedding interleaves the (t, h, w) frequencies (`family.py`). The text
  model reads 4-row positions as (text, t, h, w) too, so `packed_position_ids` serves both families.
"""

from __future__ import annotations

import torch


def mm_token_type_ids(
    input_ids: torch.Tensor, image_token_id: int, video_token_id: int | None = None
) -> torch.Tensor:
    """[B, T] int tensor: 1 where `input_ids` is the image token, 2 for the video token, else 0."""
    types = torch.zeros_like(input_ids, dtype=torch.int32)
    types[input_ids == image_token_id] = 1
    if video_token_id is not None:
        types[input_ids == video_token_id] = 2
    return types


def multimodal_position_ids(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    image_grid_thw: torch.Tensor | None,
) -> torch.Tensor:
    """The [3, B, T] mRoPE position ids a Qwen-VL model uses for this (possibly padded) batch.

    `model` is a `...ForConditionalGeneration` (or its `.model`). Pass the result as `position_ids`
    to `forward` to make positions explicit and independent of the model's cached `rope_deltas`.
    """
    if hasattr(model, "get_base_model"):  # a PEFT wrapper: the rope helpers live on the base model
        model = model.get_base_model()
    base = model.model if hasattr(model, "model") and hasattr(model.model, "get_rope_index") else model
    image_token_id = base.config.image_token_id
    position_ids, _ = base.get_rope_index(
        input_ids,
        mm_token_type_ids=mm_token_type_ids(input_ids, image_token_id),
        image_grid_thw=image_grid_thw,
        attention_mask=attention_mask,
    )
    return position_ids


def packed_position_ids(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
) -> torch.Tensor:
    """The [4, 1, L] position ids of the right-padded rows `input_ids` [B, T] packed into one row of their
    L real tokens, in row order (see `rollout/packing.py`).

    Rows 1-3 are each sequence's own mRoPE positions (`multimodal_position_ids` of the padded rows, so
    packed and padded forwards see the same positions); row 0 restarts at 0 at each sequence's first
    token. transformers 5.19's Qwen2.5-VL text model reads a 4-row tensor as (text, t, h, w): with
    `attention_mask=None` it finds the sequence boundaries from the text row (`find_packed_sequence_indices`:
    a step other than +1 starts a sequence) and builds a block-diagonal causal mask for sdpa and eager
    attention, and flash-attention derives its varlen `cu_seqlens` from the same row.
    """
    real = attention_mask.bool()
    mrope = multimodal_position_ids(model, input_ids, attention_mask, image_grid_thw)[:, real]  # [3, L]
    text = (attention_mask.long().cumsum(-1) - 1)[real]  # [L]: 0, 1, ... per sequence
    return torch.cat([text[None], mrope], dim=0)[:, None, :]
