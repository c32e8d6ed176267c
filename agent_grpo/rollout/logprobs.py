"""The training forward: per-token logprobs of a `TrainBatch` under the current policy.

The logprob head never builds the `[B, T, V]` logits. The model runs with its `lm_head` asked for
nothing (a forward pre-hook hands it an empty slice); the hidden states it would have seen are
gathered at the positions that predict a trained token (the loss mask), and `ChunkedTokenLogprobs`
computes logprob, entropy and argmax there, `chunk_size` positions at a time, in float32. Its
backward recomputes each chunk's logits instead of keeping them, so the head's extra memory is
O(chunk_size x V) in both passes instead of about 4.5 fp32 `[B, T, V]` tensors (BENCHMARKS.md).
The numbers are today's: the same per-row `log_softmax` of `lm_head(h).float() / temperature`.

The head runs inside `lm_head`'s forward (a forward hook), so under FSDP its weight is the gathered
one and under DDP the gradient reaches it through the wrapper's forward, like any other layer.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch

from agent_grpo.models.mrope import multimodal_position_ids, packed_position_ids
from agent_grpo.rollout.batch import TrainBatch
from agent_grpo.rollout.packing import PackedBatch

DEFAULT_CHUNK = 512  # positions per head chunk: 512 x 152k fp32 logits = 0.3 GB


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype, temperature: float) -> torch.Tensor:
    """`lm_head(h).float() / temperature` as the former head computed it, without a second [chunk, V] copy."""
    logits = torch.nn.functional.linear(h, weight)
    return logits.to(dtype).div_(temperature) if logits.dtype != dtype else logits.div_(temperature)


class ChunkedTokenLogprobs(torch.autograd.Function):
    """(logprob of `targets`, entropy, argmax) of `log_softmax(hidden @ weight.T / temperature)`, per row.

    hidden `[N, H]`, weight `[V, H]`, targets `[N]`. Only the logprob carries a gradient (entropy and
    argmax are metrics). Saves its inputs only; the backward recomputes each chunk's logits."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature: float, chunk: int):
        n = hidden.shape[0]
        dtype = torch.promote_types(hidden.dtype, torch.float32)  # bf16 -> fp32, fp64 stays
        logprob = torch.zeros(n, dtype=dtype, device=hidden.device)
        entropy = torch.zeros(n, dtype=dtype, device=hidden.device)
        argmax = torch.zeros(n, dtype=torch.long, device=hidden.device)
        for s in range(0, n, chunk):
            logits = _chunk_logits(hidden[s : s + chunk], weight, dtype, temperature)
            logp = torch.log_softmax(logits, dim=-1)
            del logits  # at most two [chunk, V] tensors live at once
            logprob[s : s + chunk] = logp.gather(-1, targets[s : s + chunk, None])[:, 0]
            argmax[s : s + chunk] = logp.argmax(-1)
            entropy[s : s + chunk] = -logp.exp().mul_(logp).sum(-1)
        ctx.save_for_backward(hidden, weight, targets)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.mark_non_differentiable(entropy, argmax)
        return logprob, entropy, argmax

    @staticmethod
    def backward(ctx, grad_logprob, _grad_entropy, _grad_argmax):
        hidden, weight, targets = ctx.saved_tensors
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.zeros_like(hidden) if want_hidden else None
        # Partial products are summed in float32, like one big matmul would accumulate them.
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        grad_weight = torch.zeros_like(weight, dtype=dtype) if want_weight else None
        rows = torch.arange(min(ctx.chunk, hidden.shape[0]), device=hidden.device)
        for s in range(0, hidden.shape[0], ctx.chunk):
            h = hidden[s : s + ctx.chunk]
            logits = _chunk_logits(h, weight, dtype, ctx.temperature)
            g = grad_logprob[s : s + ctx.chunk]
            # d logprob[t] / d logits = onehot(t) - softmax
            grad_logits = torch.softmax(logits, dim=-1).mul_(-g[:, None])
            del logits
            grad_logits[rows[: h.shape[0]], targets[s : s + ctx.chunk]] += g
            grad_logits = grad_logits.div_(ctx.temperature).to(weight.dtype)
            if want_hidden:
                grad_hidden[s : s + ctx.chunk] = grad_logits @ weight
            if want_weight and grad_weight.dtype == grad_logits.dtype:
                grad_weight.addmm_(grad_logits.T, h)  # no [V, H] temporary
            elif want_weight:
                grad_weight += (grad_logits.T @ h).to(dtype)
        if want_weight:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None


@dataclass
class HeadOutput:
    """`[B, T]` tensors aligned on targets (as `TrainBatch.loss_mask`), 0 where not computed."""

    logprobs: torch.Tensor  # float32, differentiable
    entropy: torch.Tensor  # float32
    argmax: torch.Tensor  # long: the token ranked first at the position that predicts t


def _base(model):
    if hasattr(model, "get_base_model"):  # a PEFT wrapper
        model = model.get_base_model()
    return model


@contextmanager
def _head_over(lm_head: torch.nn.Module, compute):
    """Run `compute(hidden [B, L, H], weight)` in place of `lm_head`, which is handed an empty slice."""
    seen: dict = {}

    def before(module, args):
        seen["hidden"] = args[0]
        return (args[0][:, :0],)

    def after(module, args, output):
        if module.bias is not None:
            raise ValueError("the chunked logprob head supports an lm_head without bias (as Qwen-VL's)")
        compute(seen.pop("hidden"), module.weight)

    handles = [lm_head.register_forward_pre_hook(before), lm_head.register_forward_hook(after)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _liger_logprobs(hidden, weight, targets, temperature: float):
    """Per-token logprobs through liger-kernel's fused linear cross-entropy (GPU only; optional)."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    loss = liger_fused_linear_cross_entropy(hidden / temperature, weight, targets, reduction="none")
    return -loss.float()


def forward_head(
    model,
    batch: TrainBatch,
    temperature: float = 1.0,
    *,
    positions: Literal["loss", "all"] = "loss",
    chunk_size: int = DEFAULT_CHUNK,
    kernel: Literal["chunked", "liger"] = "chunked",
) -> HeadOutput:
    """Logprob, entropy and argmax of each target token under `model` (see the module docstring).

    `positions="loss"` computes them where `batch.loss_mask` is 1 (what training uses); `"all"` at every
    real token after the first. A `PackedBatch` runs as its one packed row; the result is laid out
    like its padded rows. `kernel="liger"` takes the logprobs from liger-kernel's fused kernel (must be
    installed, CUDA); entropy and argmax then come from the chunked head without gradient.
    """
    if positions == "loss":
        b_idx, t_idx = batch.loss_mask.nonzero(as_tuple=True)
    else:
        real = batch.attention_mask.bool().clone()
        real[:, 0] = False
        b_idx, t_idx = real.nonzero(as_tuple=True)
    targets = batch.input_ids[b_idx, t_idx]
    kwargs = {}
    if batch.pixel_values is not None:
        kwargs = {"pixel_values": batch.pixel_values.to(model.dtype), "image_grid_thw": batch.image_grid_thw}
    if isinstance(batch, PackedBatch):
        # One row; attention_mask=None and [4, 1, L] positions (row 0: per-sequence text positions) make
        # transformers build a block-diagonal causal mask (sdpa, eager) or run flash-attention varlen.
        inputs = {
            "input_ids": batch.packed_input_ids,
            "attention_mask": None,
            "position_ids": packed_position_ids(model, batch.input_ids, batch.attention_mask, batch.image_grid_thw),
            "mm_token_type_ids": batch.packed_mm_token_type_ids,
        }
        rows = torch.zeros_like(b_idx)
        cols = batch.sequence_starts[b_idx] + t_idx - 1  # the position that predicts t
    else:
        inputs = {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "position_ids": multimodal_position_ids(model, batch.input_ids, batch.attention_mask, batch.image_grid_thw),
            "mm_token_type_ids": batch.mm_token_type_ids,
        }
        rows, cols = b_idx, t_idx - 1
    found: dict = {}

    def compute(hidden, weight):
        h = hidden[rows, cols]  # [N, H]
        if kernel == "liger":
            found["logprob"] = _liger_logprobs(h, weight, targets, temperature)
            with torch.no_grad():
                _, found["entropy"], found["argmax"] = ChunkedTokenLogprobs.apply(
                    h, weight, targets, temperature, chunk_size
                )
        else:
            found["logprob"], found["entropy"], found["argmax"] = ChunkedTokenLogprobs.apply(
                h, weight, targets, temperature, chunk_size
            )

    with _head_over(_base(model).get_output_embeddings(), compute):
        model(**inputs, use_cache=False, **kwargs)
    shape = batch.loss_mask.shape
    where = (b_idx, t_idx)
    zeros = torch.zeros(shape, dtype=found["logprob"].dtype, device=targets.device)
    return HeadOutput(
        logprobs=zeros.index_put(where, found["logprob"]),
        entropy=zeros.index_put(where, found["entropy"].detach()),
        argmax=torch.zeros(shape, dtype=torch.long, device=targets.device).index_put(where, found["argmax"]),
    )


def forward_logprobs(model, batch: TrainBatch, temperature: float = 1.0, **options):
    """Logprob of every trained token given its prefix, aligned on targets: `[B, T]`, 0 off the loss mask.

    Passes full-sequence 3-D mRoPE positions explicitly (see `mrope.py`), so the result matches the
    logprobs recorded while sampling. Returns (logprobs, entropy), both `[B, T]`. `options` go to
    `forward_head` (e.g. `positions="all"` for every token, `chunk_size`).
    """
    out = forward_head(model, batch, temperature, **options)
    return out.logprobs, out.entropy


def reference_logprobs_full_logits(model, batch: TrainBatch, temperature: float = 1.0):
    """The former head, kept as the oracle of tests and benchmarks: full `[B, T, V]` fp32 logits."""
    positions = multimodal_position_ids(model, batch.input_ids, batch.attention_mask, batch.image_grid_thw)
    kwargs = {}
    if batch.pixel_values is not None:
        kwargs = {"pixel_values": batch.pixel_values.to(model.dtype), "image_grid_thw": batch.image_grid_thw}
    out = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=positions,
        mm_token_type_ids=batch.mm_token_type_ids, use_cache=False, **kwargs,
    )
    return full_logits_head(out.logits, batch.input_ids, temperature)


def full_logits_head(logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0):
    """(logprobs, entropy) `[B, T]` from full logits `[B, T, V]`, column 0 is 0 (the former head)."""
    # [B, T-1, V] predicts tokens 1..T-1; float32 (float64 stays float64, for exact tests)
    logits = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    logp = torch.log_softmax(logits, dim=-1)
    token_lp = logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # [B, T-1]
    entropy = -(logp.exp() * logp).sum(-1)  # [B, T-1]
    zeros = torch.zeros_like(token_lp[:, :1])
    return torch.cat([zeros, token_lp], dim=1), torch.cat([zeros, entropy], dim=1)
