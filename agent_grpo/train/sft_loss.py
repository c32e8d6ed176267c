"""The SFT objective and one optimizer step over demonstrations.

Glossary as in `rollout/batch.py`: B trajectories of a micro-batch, T padded tokens, V vocabulary.

    loss = - sum_{b,t} mask[b,t] * log pi(x[b,t] | x[b,<t]) / N

`mask` is `TrainBatch.loss_mask`, the mask GRPO trains with: 1 on the tokens of `sampled` segments
(the demonstration's assistant turns), 0 on prompt and `injected` tokens (tool results, image
placeholders, notices), so no gradient ever asks the model to predict what a tool returned. N is the
number of trained tokens of the whole optimizer step (a token mean across micro-batches, so the
micro-batch split does not change the gradient). Plain negative log-likelihood at temperature 1:
no label smoothing, no sequence weighting.
"""

from __future__ import annotations

import time

import torch

from agent_grpo.budget import VisualBudget
from agent_grpo.rollout.batch import TrainBatch
from agent_grpo.rollout.logprobs import DEFAULT_CHUNK, HeadOutput, forward_head
from agent_grpo.rollout.packing import PackingMode, packing_enabled, padding_share
from agent_grpo.train.step import build_micro_batches
from agent_grpo.trajectory import Trajectory


def sft_loss(logprobs: torch.Tensor, loss_mask: torch.Tensor, num_tokens: float | None = None) -> torch.Tensor:
    """Masked negative log-likelihood, summed over `loss_mask` and divided by `num_tokens`.

    logprobs, loss_mask: `[B, T]`, aligned on targets (see `forward_logprobs`). `num_tokens` defaults
    to `loss_mask.sum()` (the mean over this batch's trained tokens).
    """
    denominator = float(loss_mask.sum()) if num_tokens is None else num_tokens
    return -(logprobs * loss_mask).sum() / max(denominator, 1.0)


def _correct_tokens(out: HeadOutput, batch: TrainBatch) -> float:
    """Trained tokens the model ranks first (the head's argmax is aligned on targets, like the mask)."""
    return float(((out.argmax == batch.input_ids).float() * batch.loss_mask).sum())


def _batches(
    model, trajs: list[Trajectory], chat, budget: VisualBudget, micro_batch_tokens: int, packing: PackingMode
) -> list[TrainBatch]:
    device = next(model.parameters()).device
    pack = packing_enabled(packing, model)
    return build_micro_batches(trajs, chat, budget, micro_batch_tokens, pack=pack, device=device)[0]


def sft_update(
    model,
    optimizer: torch.optim.Optimizer,
    scheduler,
    trajs: list[Trajectory],
    chat,
    budget: VisualBudget,
    *,
    micro_batch_tokens: int,
    max_grad_norm: float,
    packing: PackingMode = "never",
    head_chunk_tokens: int = DEFAULT_CHUNK,
) -> dict[str, float]:
    """One optimizer step on demonstrations. Returns loss, token accuracy, grad norm, lr, throughput,
    padding share. `packing` as `OptimConfig.packing`."""
    t0 = time.perf_counter()
    batches = _batches(model, trajs, chat, budget, micro_batch_tokens, packing)
    trained = sum(float(b.loss_mask.sum()) for b in batches)
    model.train()
    total_loss = correct = 0.0
    for batch in batches:
        out = forward_head(model, batch, chunk_size=head_chunk_tokens)  # [B, T]
        loss = sft_loss(out.logprobs, batch.loss_mask, trained)
        loss.backward()
        total_loss += float(loss.detach())  # CPU-GPU sync point, once per micro-batch
        correct += _correct_tokens(out, batch)
    params = [p for group in optimizer.param_groups for p in group["params"]]  # fp32 masters if any
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    lr = float(optimizer.param_groups[0]["lr"])  # the rate this step trains at, not the next step's
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    seconds = time.perf_counter() - t0
    tokens = sum(b.num_tokens for b in batches)
    return {
        "loss": total_loss, "token_accuracy": correct / max(trained, 1.0), "grad_norm": float(grad_norm),
        "lr": lr, "micro_batches": float(len(batches)),
        "trained_tokens": trained, "tokens": float(tokens),
        "tokens_per_s": tokens / seconds, "trained_tokens_per_s": trained / seconds,
        "padding_share": padding_share(batches),
    }


@torch.no_grad()
def sft_evaluate(
    model, trajs: list[Trajectory], chat, budget: VisualBudget, *, micro_batch_tokens: int,
    packing: PackingMode = "never", head_chunk_tokens: int = DEFAULT_CHUNK,
) -> dict[str, float]:
    """Loss and token accuracy on held-out demonstrations (no gradient)."""
    batches = _batches(model, trajs, chat, budget, micro_batch_tokens, packing)
    trained = sum(float(b.loss_mask.sum()) for b in batches)
    model.eval()
    total_loss = correct = 0.0
    for batch in batches:
        out = forward_head(model, batch, chunk_size=head_chunk_tokens)
        total_loss += float(sft_loss(out.logprobs, batch.loss_mask, trained))
        correct += _correct_tokens(out, batch)
    return {"loss": total_loss, "token_accuracy": correct / max(trained, 1.0)}
