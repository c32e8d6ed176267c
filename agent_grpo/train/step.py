"""One GRPO optimizer step over a rollout batch: micro-batches by token budget, loss, update.

Glossary as in `rollout/batch.py`: B trajectories of a micro-batch, T padded tokens.

Under `accelerate launch` (DDP) each process passes its own trajectories and its `Accelerator`:
gradients are averaged across processes once per optimizer step (the other micro-batches run under
`no_sync`), and dapo's token count is the global one, so the result is the loss of the whole batch.
Under FSDP (`fsdp.py`) every forward and backward is a collective, so each process runs as many
micro-batches as the busiest one, repeating a batch with zero weight (`pad_micro_batches`).
"""

from __future__ import annotations

import contextlib

import torch

from agent_grpo.budget import VisualBudget
from agent_grpo.rollout.batch import TrainBatch, assemble_batch
from agent_grpo.rollout.logprobs import DEFAULT_CHUNK, forward_logprobs
from agent_grpo.rollout.packing import (
    PackingMode,
    balanced_micro_batches,
    micro_batches_needed,
    pack_batch,
    packing_enabled,
    padding_share,
)
from agent_grpo.rollout.vision import VisionCache
from agent_grpo.train.config import LossConfig
from agent_grpo.train.fsdp import is_sharded
from agent_grpo.train.loss import grpo_loss, mask_truncated_rows
from agent_grpo.trajectory import Trajectory


def micro_batches(trajs: list[Trajectory], token_budget: int) -> list[list[Trajectory]]:
    """Greedy packing in order: each chunk's padded size (rows x longest) stays within the budget."""
    chunks: list[list[Trajectory]] = []
    current: list[Trajectory] = []
    longest = 0
    for t in trajs:
        n = sum(len(s.token_ids) for s in t.segments)
        if current and (len(current) + 1) * max(longest, n) > token_budget:
            chunks.append(current)
            current, longest = [], 0
        current.append(t)
        longest = max(longest, n)
    if current:
        chunks.append(current)
    return chunks


def pad_micro_batches(batches: list, advantages: list, accelerator) -> int:
    """Append zero-weight repeats of the smallest micro-batch until every process has as many micro-batches
    as the busiest one; returns how many of `batches` are real.

    FSDP all-gathers each unit in every forward and reduce-scatters its gradients in every backward: a
    process that ran fewer micro-batches would leave the others waiting in a collective."""
    real = len(batches)
    device = batches[0].input_ids.device
    most = int(accelerator.gather(torch.tensor([real], device=device)).max())
    smallest = min(range(real), key=lambda i: batches[i].input_ids.numel())
    batches += [batches[smallest]] * (most - real)
    advantages += [advantages[smallest]] * (most - real)
    return real


class _Policy:
    """Calls go to `module` (a DDP wrapper, a PEFT model or the model itself), attributes to `base`,
    the transformers model: `forward_logprobs` reads its config, dtype and mRoPE index, which the
    DDP and PEFT wrappers do not expose."""

    def __init__(self, module, base):
        self._module, self._base = module, base

    def __call__(self, *args, **kwargs):
        return self._module(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._base, name)


def _ref_logprobs(policy: _Policy, bare, ref_model, batch: TrainBatch, temperature: float, chunk: int) -> torch.Tensor:
    with torch.no_grad():
        if ref_model is not None:
            return forward_logprobs(ref_model, batch, temperature, chunk_size=chunk)[0]
        with bare.disable_adapter():  # LoRA: the base weights are the reference
            return forward_logprobs(policy, batch, temperature, chunk_size=chunk)[0]


def build_micro_batches(
    trajs: list[Trajectory], chat, budget: VisualBudget, token_budget: int, *, pack: bool, device, accelerator=None
) -> tuple[list[TrainBatch], list[list[Trajectory]]]:
    """The step's micro-batches on `device` and the trajectories of each: right-padded (greedy, in order), or packed rows of about
    equal token counts, as many on every process as the busiest one needs (so DDP/FSDP processes
    wait on one another as little as the data allows)."""
    vision = VisionCache(chat, budget)  # a group's rows share images: process each once per step
    if not pack:
        chunks = micro_batches(trajs, token_budget)
        return [assemble_batch(c, chat, budget, vision).to(device) for c in chunks], chunks
    count = micro_batches_needed(trajs, token_budget)
    if accelerator is not None and accelerator.num_processes > 1:
        count = int(accelerator.gather(torch.tensor([count], device=device)).max())
    chunks = balanced_micro_batches(trajs, token_budget, count)
    return [pack_batch(assemble_batch(c, chat, budget, vision)).to(device) for c in chunks], chunks


def grpo_update(
    model,
    optimizer: torch.optim.Optimizer,
    scheduler,
    trajs: list[Trajectory],
    chat,
    budget: VisualBudget,
    loss_cfg: LossConfig,
    *,
    temperature: float,
    micro_batch_tokens: int,
    max_grad_norm: float,
    max_completion_length: int,
    ref_model=None,
    accelerator=None,
    packing: PackingMode = "never",
    head_chunk_tokens: int = DEFAULT_CHUNK,
) -> dict[str, float]:
    """`num_iterations` optimizer steps on trajectories whose `advantage` is set. Returns metrics.

    `model` and `optimizer` are the prepared (possibly DDP-wrapped) ones when `accelerator` is given.
    `packing` as `OptimConfig.packing`; `head_chunk_tokens` positions per logprob-head chunk.
    """
    bare = accelerator.unwrap_model(model) if accelerator is not None else model
    base = bare.get_base_model() if hasattr(bare, "get_base_model") else bare  # under PEFT's wrapper
    policy, frozen = _Policy(model, base), _Policy(bare, base)  # with grad sync / no-grad forwards
    device = next(bare.parameters()).device
    pack = packing_enabled(packing, base)
    batches, chunks = build_micro_batches(
        trajs, chat, budget, micro_batch_tokens, pack=pack, device=device, accelerator=accelerator
    )
    advantages = [torch.tensor([t.advantage for t in c], dtype=torch.float32, device=device) for c in chunks]
    sharded = accelerator is not None and accelerator.num_processes > 1 and is_sharded(bare)
    real = pad_micro_batches(batches, advantages, accelerator) if sharded else len(batches)
    # dapo normalises by every loss token of the step, across micro-batches and processes. DDP
    # averages gradients over P processes, so each process divides by (global count / P).
    local_tokens = sum(
        (mask_truncated_rows(b.loss_mask, b.truncated) if loss_cfg.mask_truncated else b.loss_mask).sum()
        for b in batches[:real]
    )
    total_tokens = float(local_tokens)
    if accelerator is not None and accelerator.num_processes > 1:
        total_tokens = float(accelerator.reduce(local_tokens.to(device), reduction="sum")) / accelerator.num_processes
    needs_old = loss_cfg.num_iterations > 1
    old = []
    if needs_old:  # the policy before any update of this step; the ratio is taken against it
        with torch.no_grad():
            old = [forward_logprobs(frozen, b, temperature, chunk_size=head_chunk_tokens)[0] for b in batches]
    refs = (
        [_ref_logprobs(frozen, bare, ref_model, b, temperature, head_chunk_tokens) for b in batches]
        if loss_cfg.beta > 0 else []
    )
    # The optimizer's parameters, not `model.parameters()`: after a no-grad forward FSDP leaves the root
    # unit gathered, and the module would list those full tensors instead of the trained shards.
    trainable = [p for group in optimizer.param_groups for p in group["params"]]

    model.train()
    sums: dict[str, float] = {}
    count = 0
    for _ in range(loss_cfg.num_iterations):
        for i, (batch, adv) in enumerate(zip(batches, advantages, strict=True)):
            # DDP: gradients are synced once, on the last micro-batch: every process then makes exactly
            # one synced backward per optimizer step, whatever its number of micro-batches. FSDP syncs
            # (reduce-scatters) every backward, which keeps the gradients sharded.
            last = i == len(batches) - 1
            plain = last or accelerator is None or sharded
            sync = contextlib.nullcontext() if plain else accelerator.no_sync(model)
            with sync:
                lp, entropy = forward_logprobs(policy, batch, temperature, chunk_size=head_chunk_tokens)  # [B, T]
                old_lp = old[i] if needs_old else lp.detach()
                loss, m = grpo_loss(
                    lp, old_lp, adv, batch.loss_mask,
                    variant=loss_cfg.variant, epsilon_low=loss_cfg.epsilon_low, epsilon_high=loss_cfg.epsilon_high,
                    beta=loss_cfg.beta, ref_logprobs=refs[i] if refs else None,
                    # The engine's logprobs: truncated importance sampling when they drift from the trainer's.
                    sampling_logprobs=batch.old_logprobs, is_level=loss_cfg.is_level, is_cap=loss_cfg.is_cap,
                    max_completion_length=max_completion_length, num_items_in_batch=max(total_tokens, 1.0),
                    accumulation_steps=real, num_rows_in_batch=len(trajs),
                    mask_truncated=loss_cfg.mask_truncated, truncated=batch.truncated,
                )
                if i >= real:  # FSDP padding: the collectives run, the gradient is zero
                    loss = loss * 0.0
                if accelerator is not None:
                    accelerator.backward(loss)
                else:
                    loss.backward()
            if i >= real:
                continue
            mask = batch.loss_mask.bool()
            m = {k: float(v) for k, v in m.items()}
            m["loss"] = float(loss.detach())
            m["entropy"] = float(entropy.detach()[mask].mean()) if mask.any() else 0.0
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
        if accelerator is not None:
            grad_norm = accelerator.clip_grad_norm_(trainable, max_grad_norm)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
        stepped_lr = float(optimizer.param_groups[0]["lr"])  # the rate this pass trained at, not the next one's
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    # The micro-batch losses add up to the step's loss; the other metrics are means per micro-batch.
    passes = loss_cfg.num_iterations
    out = {k: v / (passes if k in ("loss", "tokens") else count) for k, v in sums.items()}
    out["grad_norm"] = float(grad_norm)
    out["lr"] = stepped_lr
    out["micro_batches"] = float(real)
    out["train_tokens"] = float(sum(int(b.attention_mask.sum()) for b in batches[:real]))
    out["padding_share"] = padding_share(batches[:real])  # of the model's input slots, 0 when packed
    return out
