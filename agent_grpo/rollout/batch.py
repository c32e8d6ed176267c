"""Assembling trajectories into one training batch.

Glossary: B trajectories, T padded tokens, I images over the whole batch, P vision patches.
Every per-token tensor is aligned on *target* tokens: `loss_mask[b, t] = 1` means token t of row b
was sampled by the policy, and `old_logprobs[b, t]` is its sampling logprob (the model predicts it
from position t - 1).

Image tokens and image features are checked here, once: each row's `<|image_pad|>` count must equal
the patches of its own images, or a `BatchError` names the trajectory. Images are never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agent_grpo.budget import VisualBudget
from agent_grpo.errors import BatchError
from agent_grpo.models.mrope import mm_token_type_ids
from agent_grpo.rollout.vision import VisionCache
from agent_grpo.trajectory import Trajectory


@dataclass
class TrainBatch:
    input_ids: torch.Tensor  # [B, T] right-padded
    attention_mask: torch.Tensor  # [B, T]
    mm_token_type_ids: torch.Tensor  # [B, T] 1 on image pads
    loss_mask: torch.Tensor  # [B, T] float, 1 on sampled tokens
    old_logprobs: torch.Tensor  # [B, T] sampling logprobs on sampled tokens, 0 elsewhere
    pixel_values: torch.Tensor | None  # [P, C*temporal*patch*patch]
    image_grid_thw: torch.Tensor | None  # [I, 3]
    trajectory_ids: list[str]
    truncated: torch.Tensor  # [B] bool, trajectory ended by a token limit

    def to(self, device) -> TrainBatch:
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return TrainBatch(**moved)

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def assemble_batch(
    trajectories: list[Trajectory], chat, budget: VisualBudget, cache: VisionCache | None = None
) -> TrainBatch:
    """Build the padded batch for the training forward from finished trajectories.

    `cache` shares resized and patchified images across calls (e.g. the micro-batches of one step).
    """
    if not trajectories:
        raise BatchError("cannot assemble an empty batch")
    cache = cache or VisionCache(chat, budget)
    rows, masks, olds, images = [], [], [], []
    for traj in trajectories:
        ids: list[int] = []
        loss: list[float] = []
        old: list[float] = []
        for seg in traj.segments:
            ids += seg.token_ids
            if seg.kind == "sampled":
                if seg.logprobs is None or len(seg.logprobs) != len(seg.token_ids):
                    raise BatchError(f"trajectory {traj.id}: sampled segment without one logprob per token")
                loss += [1.0] * len(seg.token_ids)
                old += seg.logprobs
            else:
                loss += [0.0] * len(seg.token_ids)
                old += [0.0] * len(seg.token_ids)
        if not ids:
            raise BatchError(f"trajectory {traj.id} has no tokens (was it produced by the rollout driver?)")
        expected = sum(cache.num_tokens(img) for img in traj.images)
        found = sum(1 for t in ids if t == chat.image_token_id)
        if found != expected:
            raise BatchError(
                f"trajectory {traj.id}: {found} image tokens in its text but its {len(traj.images)} images give "
                f"{expected} features; tokens and images went out of sync"
            )
        rows.append(ids)
        masks.append(loss)
        olds.append(old)
        images += traj.images

    width = max(len(r) for r in rows)
    B = len(rows)
    input_ids = torch.full((B, width), chat.pad_token_id, dtype=torch.long)
    attention = torch.zeros((B, width), dtype=torch.long)
    loss_mask = torch.zeros((B, width), dtype=torch.float32)
    old_lp = torch.zeros((B, width), dtype=torch.float32)
    for b, (ids, loss, old) in enumerate(zip(rows, masks, olds, strict=True)):
        n = len(ids)
        input_ids[b, :n] = torch.tensor(ids)
        attention[b, :n] = 1
        loss_mask[b, :n] = torch.tensor(loss)
        old_lp[b, :n] = torch.tensor(old)
    loss_mask[:, 0] = 0.0  # nothing predicts the first token

    pixel_values = image_grid_thw = None
    if images:
        vision = cache.inputs(images)
        pixel_values, image_grid_thw = vision["pixel_values"], vision["image_grid_thw"]
    truncated = torch.tensor([t.termination is not None and t.termination.value == "truncated" for t in trajectories])
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention,
        mm_token_type_ids=mm_token_type_ids(input_ids, chat.image_token_id),
        loss_mask=loss_mask,
        old_logprobs=old_lp,
        pixel_values=pixel_values,
        image_grid_thw=image_grid_thw,
        trajectory_ids=[t.id for t in trajectories],
        truncated=truncated,
    )
