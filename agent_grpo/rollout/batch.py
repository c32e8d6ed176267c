"""Assembling trajectories into one training batch.

Glossary: B trajectories, T padded tokens, I images over the whole batch, P vision patches.
Every per-token tensor is aligned on *target* tokens: `loss_mask[b, t] = 1` means token t of row b
was sampled by the policy, and `old_logprobs[b, t]` is its sampling logprob (the model predicts it
from position t - 1).

Image tokens and image features are checked here, once, per image: a row's images are taken in the
order of their placeholders (the order of the image parts in its messages, which is what the chat
template rendered), and each run of `<|image_pad|>` tokens must equal the features of the image at
that place, or a `BatchError` names the trajectory. Images are never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agent_grpo.budget import VisualBudget
from agent_grpo.content import ImagePart, Message
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


def placeholder_images(traj: Trajectory) -> list[ImagePart]:
    """The trajectory's images in the order of their placeholders in its tokens.

    That is the order of the image parts in its messages (what the chat template rendered), which need
    not be `traj.images`' order (an environment's prompt may show its images in any order). A trajectory
    whose messages hold no image (one built from token segments alone, e.g. a pretraining sample) lists
    its images in token order.
    """
    if not any(m.images for m in traj.messages):
        return list(traj.images)
    return images_in_messages(traj.messages, traj.images, traj.id)


def images_in_messages(messages: list[Message], images: list[ImagePart], trajectory_id: str) -> list[ImagePart]:
    """The image parts of `messages` in rendering order, as the entries of `images` (which hold the pixels)."""
    by_key = {(img.observation, img.sha256): img for img in images}
    ordered = []
    for message in messages:
        for part in message.images:
            img = by_key.get((part.observation, part.sha256))
            if img is None:
                raise BatchError(
                    f"trajectory {trajectory_id}: a message shows image {part.observation} ({part.sha256[:12]}), "
                    f"which is not among its {len(images)} images (an environment's prompt must show the admitted "
                    "images `Environment.prompt` is given, not the task's own)"
                )
            ordered.append(img)
    return ordered


def check_image_tokens(trajectory_id: str, ids: list[int], image_token_id: int, expected: list[int]) -> None:
    """Each run of image tokens in `ids` must have the length its image's features need, in order."""
    runs: list[int] = []
    previous = None
    for t in ids:
        if t == image_token_id:
            if previous == image_token_id:
                runs[-1] += 1
            else:
                runs.append(1)
        previous = t
    if runs != expected:
        raise BatchError(
            f"trajectory {trajectory_id}: its text has image-token runs {runs} but its {len(expected)} images "
            f"in placeholder order give {expected} features; tokens and images went out of sync"
        )


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
        ordered = placeholder_images(traj)
        check_image_tokens(traj.id, ids, chat.image_token_id, [cache.num_tokens(img) for img in ordered])
        rows.append(ids)
        masks.append(loss)
        olds.append(old)
        images += ordered

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
