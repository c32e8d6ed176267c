"""Padding-free training batches: several trajectories packed into one row.

A `PackedBatch` is a `TrainBatch` (its right-padded rows stay the layout of every per-token tensor the
loss reads: loss mask, old logprobs, the logprobs `forward_logprobs` returns) plus the one packed row
the model runs on: the real tokens of every row, concatenated in row order, with no padding. Images
keep their order (row 0's, then row 1's, ...), so `pixel_values` and `image_grid_thw` are shared with
the padded layout, and the vision tower already attends within each image (its own `cu_seqlens`).

Attention must not cross sequences: `models/mrope.py::packed_position_ids` gives each sequence its
own positions, and transformers turns them into a block-diagonal causal mask (sdpa, eager) or
flash-attention varlen. With flash-attention (or flex attention) that skips the masked blocks, packing
saves the padding's compute; with sdpa or eager the mask is dense over the packed row (L^2 scores for
L packed tokens), so `packing_enabled("auto")` packs only for the former and right-pads otherwise.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch

from agent_grpo.rollout.batch import TrainBatch
from agent_grpo.trajectory import Trajectory

PackingMode = Literal["auto", "always", "never"]
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "flex_attention")


@dataclass
class PackedBatch(TrainBatch):
    packed_input_ids: torch.Tensor = None  # [1, L] the real tokens of every row, in row order
    packed_mm_token_type_ids: torch.Tensor = None  # [1, L]
    sequence_starts: torch.Tensor = None  # [B] long: where row b starts in the packed row

    def to(self, device) -> PackedBatch:
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return PackedBatch(**moved)


def pack_batch(batch: TrainBatch) -> PackedBatch:
    """The packed form of a right-padded batch (its checks already ran in `assemble_batch`)."""
    real = batch.attention_mask.bool()
    if not bool((real.long().diff(dim=1) <= 0).all()):
        raise ValueError("pack_batch expects right-padded rows (real tokens first)")
    lengths = real.sum(1)
    starts = torch.cumsum(lengths, 0) - lengths
    fields = {f.name: getattr(batch, f.name) for f in dataclasses.fields(TrainBatch)}
    return PackedBatch(
        **fields,
        packed_input_ids=batch.input_ids[real][None],
        packed_mm_token_type_ids=batch.mm_token_type_ids[real][None],
        sequence_starts=starts,
    )


def packing_enabled(mode: PackingMode, model) -> bool:
    """Whether to pack: always, never, or (auto) when the attention skips what the packed mask hides."""
    if mode != "auto":
        return mode == "always"
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base.config, "_attn_implementation", None) in VARLEN_ATTENTION


def padding_share(batches: list[TrainBatch]) -> float:
    """Share of the model's input slots that hold padding, over `batches` (0 for packed batches)."""
    slots = sum(b.packed_input_ids.numel() if isinstance(b, PackedBatch) else b.input_ids.numel() for b in batches)
    real = sum(int(b.attention_mask.sum()) for b in batches)
    return 1.0 - real / max(slots, 1)


def trajectory_tokens(traj: Trajectory) -> int:
    return sum(len(s.token_ids) for s in traj.segments)


def micro_batches_needed(trajs: list[Trajectory], token_budget: int) -> int:
    """How many packed micro-batches of at most `token_budget` tokens `trajs` need (a lower bound that
    `balanced_micro_batches` meets unless single trajectories are lumpy)."""
    if not trajs:
        return 0
    return max(1, math.ceil(sum(trajectory_tokens(t) for t in trajs) / token_budget))


def balanced_micro_batches(
    trajs: list[Trajectory], token_budget: int, num_batches: int | None = None
) -> list[list[Trajectory]]:
    """Split `trajs` into micro-batches of about equal token counts, each within `token_budget`
    (a trajectory longer than the budget gets one of its own).

    `num_batches` (e.g. the most any DDP/FSDP process needs, so every process runs as many micro-batches
    of similar size) is a minimum; more are made when the budget asks for it. Longest first into the
    lightest micro-batch; each keeps its trajectories in their original order."""
    if not trajs:
        return []
    sizes = [trajectory_tokens(t) for t in trajs]
    k = min(len(trajs), max(num_batches or 1, micro_batches_needed(trajs, token_budget)))
    while True:
        bins: list[list[int]] = [[] for _ in range(k)]
        loads = [0] * k
        for i in sorted(range(len(trajs)), key=lambda i: -sizes[i]):
            j = min(range(k), key=lambda j: loads[j])
            bins[j].append(i)
            loads[j] += sizes[i]
        over = any(loads[j] > token_budget and len(bins[j]) > 1 for j in range(k))
        if not over or k == len(trajs):
            break
        k += 1
    return [[trajs[i] for i in sorted(b)] for b in bins if b]
