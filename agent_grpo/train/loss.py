"""The GRPO loss: PPO-clipped, group-relative, over sampled tokens only.

Glossary: B trajectories (rows), T padded tokens, aligned on *target* tokens as in `TrainBatch`:
`loss_mask[b, t] = 1` when token t of row b was sampled by the policy. A_b is row b's advantage.

Objective (minimised; M = loss_mask after masking truncated rows, i ranges over rows, t over tokens):

    r_it   = exp(logp_it - logp_old_it)                                  policy ratio
    w_it   = min(exp(logp_old_it - logp_sample_it), C)                   engine IS weight (1 when off;
                                                                         other levels/modes below)
    kl_it  = exp(ref_it - logp_it) - (ref_it - logp_it) - 1              k3 estimator of KL(pi || ref)
    l_it   = -w_it * min(r_it A_i, clip(r_it, 1 - eps_low, 1 + eps_high) A_i) + beta kl_it

    grpo     L = 1/B sum_i (sum_t M_it l_it / sum_t M_it)                DeepSeekMath GRPO
    bnpo     L = sum_it M_it l_it / sum_it M_it                          local token mean
    dr_grpo  L = sum_it M_it l_it / (B * max_completion_length)          Dr. GRPO
    dapo     L = sum_it M_it l_it / num_items_in_batch                   DAPO token-level, global count

grpo, bnpo and dr_grpo are further divided by `accumulation_steps`; dapo is not, its count already
spans the accumulation window. All of this is TRL 1.16 `GRPOTrainer._compute_loss` to the letter
(tests/train/test_trl_oracle.py runs TRL's code on the same tensors). One addition: micro-batches
of unequal row counts (token-budget packing) make the accumulation division inexact for grpo and
dr_grpo; `num_rows_in_batch` (rows of the whole optimiser step) then replaces B * accumulation_steps,
so the micro-batch losses sum to the full-batch loss.

Departures from the GRPO paper (Shao et al. 2024, DeepSeekMath):
- Two clip epsilons (DAPO's clip-higher); the paper has one eps. Set them equal for the paper.
- Aggregations other than "grpo" come from DAPO, Dr. GRPO and TRL (bnpo); "grpo" is the paper's.
- The KL term is k3 on the current policy, as in the paper, but defaults to off (beta = 0, as TRL,
  DAPO and Dr. GRPO do). `kl_ratio_weighted` multiplies it by r_it (DeepSeek-V3.2's unbiased KL;
  TRL 1.16 turns this on by default, we do not).
- Engine importance sampling (not in the paper; truncated IS of Yao et al. 2025, TRL's
  `vllm_importance_sampling_correction`): the rollout engine's logprobs differ from the trainer's,
  so the policy term is reweighted by pi_old / pi_sample, detached. It does not touch the KL term.
  Token level: one weight per token. Sequence level: the product over the row's masked tokens,
  exp(sum_t M_it (logp_old_it - logp_sample_it)). "truncate" caps the weight at C, "mask" zeroes
  weights above C. A NaN sampling logprob gives weight 1, as in TRL.
- Multi-turn: only sampled tokens carry loss; tool results, images and notices have mask 0.
- Truncated trajectories (token limit hit; Mini-o3's over-turn masking, DAPO's overlong filtering)
  may have their whole row masked. Masked rows still count in B for grpo and dr_grpo (as in TRL).
- Several optimiser passes per rollout batch (num_iterations > 1) need nothing here beyond passing
  the same `old_logprobs` at every pass; with one pass and old = logp.detach(), r = 1.
"""

from __future__ import annotations

from typing import Literal

import torch

from agent_grpo.errors import ConfigError

Variant = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
ISLevel = Literal["none", "token", "sequence"]
ISMode = Literal["truncate", "mask"]
VARIANTS = ("grpo", "bnpo", "dr_grpo", "dapo")


def mask_truncated_rows(loss_mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """`loss_mask` `[B, T]` with the rows of truncated trajectories (`truncated` `[B]` bool) zeroed.

    Use it to count `num_items_in_batch` for dapo when truncated rows are masked.
    """
    return loss_mask * (~truncated.bool()).unsqueeze(1).to(loss_mask.dtype)


@torch.no_grad()
def importance_weights(
    old_logprobs: torch.Tensor,
    sampling_logprobs: torch.Tensor,
    loss_mask: torch.Tensor,
    level: Literal["token", "sequence"],
    mode: ISMode = "truncate",
    cap: float = 2.0,
) -> torch.Tensor:
    """Engine-mismatch weights pi_old / pi_sample: `[B, T]` (token level) or `[B, 1]` (sequence level)."""
    diff = torch.nan_to_num((old_logprobs - sampling_logprobs) * loss_mask, nan=0.0)  # [B, T]
    if level == "sequence":
        diff = diff.sum(-1, keepdim=True)  # [B, 1] log of the product over the row
    weights = diff.exp()
    if mode == "truncate":
        return weights.clamp(max=cap)
    return weights.masked_fill(weights > cap, 0.0)


def per_token_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    epsilon_low: float,
    epsilon_high: float,
    beta: float = 0.0,
    ref_logprobs: torch.Tensor | None = None,
    kl_ratio_weighted: bool = False,
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """l_it of the module docstring, `[B, T]` and 0 off the mask; also kl_it `[B, T]` (None when
    beta is 0) and the ratio r_it `[B, T]` (detached)."""
    valid = loss_mask.bool()
    # Off-mask positions hold arbitrary values (0, padding); keep them out of exp so an inf there
    # cannot turn into a NaN gradient. Their loss is zeroed below anyway.
    log_ratio = torch.where(valid, logprobs - old_logprobs, 0.0)  # [B, T]
    ratio = log_ratio.exp()
    clipped = ratio.clamp(1 - epsilon_low, 1 + epsilon_high)
    adv = advantages.unsqueeze(1)  # [B, 1]
    loss = -torch.min(ratio * adv, clipped * adv)  # [B, T]
    if is_weights is not None:
        loss = loss * is_weights
    kl = None
    if beta != 0.0:
        delta = torch.where(valid, ref_logprobs - logprobs, 0.0)  # [B, T] log(ref / pi)
        kl = delta.exp() - delta - 1
        if kl_ratio_weighted:
            kl = kl * ratio
        loss = loss + beta * kl
    return loss * loss_mask, kl, ratio.detach()


def aggregate_loss(
    per_token: torch.Tensor,
    loss_mask: torch.Tensor,
    variant: Variant,
    *,
    max_completion_length: int | None = None,
    num_items_in_batch: torch.Tensor | float | None = None,
    accumulation_steps: int = 1,
    num_rows_in_batch: int | None = None,
) -> torch.Tensor:
    """Reduce masked l_it `[B, T]` to the scalar of the module docstring's `variant` line."""
    total = per_token.sum()
    rows = per_token.size(0) * accumulation_steps if num_rows_in_batch is None else num_rows_in_batch
    if variant == "grpo":
        return (per_token.sum(-1) / loss_mask.sum(-1).clamp(min=1.0)).sum() / rows
    if variant == "bnpo":
        return total / loss_mask.sum().clamp(min=1.0) / accumulation_steps
    if variant == "dr_grpo":
        if max_completion_length is None:
            raise ConfigError(
                "variant='dr_grpo' divides by B * max_completion_length; pass max_completion_length"
            )
        return total / (rows * max_completion_length)
    if variant == "dapo":
        if num_items_in_batch is None:  # only this micro-batch is known: the local token mean (bnpo)
            return total / loss_mask.sum().clamp(min=1.0) / accumulation_steps
        return total / torch.as_tensor(num_items_in_batch, dtype=total.dtype).clamp(min=1.0)
    raise ConfigError(f"variant={variant!r}; use one of {', '.join(VARIANTS)}")


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    variant: Variant,
    epsilon_low: float,
    epsilon_high: float,
    beta: float = 0.0,
    ref_logprobs: torch.Tensor | None = None,
    kl_ratio_weighted: bool = False,
    sampling_logprobs: torch.Tensor | None = None,
    is_level: ISLevel = "none",
    is_mode: ISMode = "truncate",
    is_cap: float = 2.0,
    max_completion_length: int | None = None,
    num_items_in_batch: torch.Tensor | float | None = None,
    accumulation_steps: int = 1,
    num_rows_in_batch: int | None = None,
    mask_truncated: bool = False,
    truncated: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of the module docstring and detached scalar metrics.

    logprobs `[B, T]`: current policy, with grad (`forward_logprobs`). old_logprobs `[B, T]`: the
    policy the ratio is taken against, fixed across the num_iterations passes. advantages `[B]`.
    loss_mask `[B, T]`: 1 on sampled tokens. ref_logprobs `[B, T]`: needed only when beta != 0.
    sampling_logprobs `[B, T]`: the engine's, needed only when is_level != "none"; old_logprobs must
    then be the trainer's own no-grad forward before the first update. num_items_in_batch (dapo):
    loss tokens of every micro-batch of one optimiser step, after truncation masking, divided by the
    number of processes when DDP averages gradients; num_rows_in_batch (grpo, dr_grpo): rows of every
    micro-batch of one optimiser step, per process. truncated `[B]` bool.

    Metrics (means over masked tokens, as TRL logs them): clip_ratio/low (r < 1 - eps_low, A < 0),
    clip_ratio/high (r > 1 + eps_high, A > 0), clip_ratio/region (either), ratio, kl (beta != 0),
    is_weight (is_level != "none"; mean over rows at sequence level), tokens (masked token count).
    """
    if logprobs.shape != old_logprobs.shape or logprobs.shape != loss_mask.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)} and loss_mask "
            f"{tuple(loss_mask.shape)} must all be [B, T]"
        )
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must be [B] = [{logprobs.size(0)}]; got {tuple(advantages.shape)}")
    if variant not in VARIANTS:
        raise ConfigError(f"variant={variant!r}; use one of {', '.join(VARIANTS)}")
    if beta != 0.0 and ref_logprobs is None:
        raise ConfigError(
            f"beta={beta} needs ref_logprobs from the frozen reference; pass them or set beta=0"
        )
    if is_level not in ("none", "token", "sequence"):
        raise ConfigError(f"is_level={is_level!r}; use 'none', 'token' or 'sequence'")
    if is_level != "none" and sampling_logprobs is None:
        raise ConfigError(
            f"is_level={is_level!r} needs the engine's sampling_logprobs; pass them or use 'none'"
        )
    if is_mode not in ("truncate", "mask"):
        raise ConfigError(f"is_mode={is_mode!r}; use 'truncate' or 'mask'")
    if mask_truncated and truncated is None:
        raise ConfigError("mask_truncated=True needs truncated [B] (TrainBatch.truncated)")

    mask = mask_truncated_rows(loss_mask, truncated) if mask_truncated else loss_mask  # [B, T]
    is_w = None
    if is_level != "none":
        is_w = importance_weights(old_logprobs, sampling_logprobs, mask, is_level, is_mode, is_cap)
    per_token, kl, ratio = per_token_loss(
        logprobs,
        old_logprobs.detach(),
        advantages.detach(),
        mask,
        epsilon_low=epsilon_low,
        epsilon_high=epsilon_high,
        beta=beta,
        ref_logprobs=None if ref_logprobs is None else ref_logprobs.detach(),
        kl_ratio_weighted=kl_ratio_weighted,
        is_weights=is_w,
    )
    loss = aggregate_loss(
        per_token,
        mask,
        variant,
        max_completion_length=max_completion_length,
        num_items_in_batch=num_items_in_batch,
        accumulation_steps=accumulation_steps,
        num_rows_in_batch=num_rows_in_batch,
    )

    with torch.no_grad():
        tokens = mask.sum()
        denom = tokens.clamp(min=1.0)
        adv = advantages.unsqueeze(1)  # [B, 1]
        low = (ratio < 1 - epsilon_low) & (adv < 0)  # [B, T]
        high = (ratio > 1 + epsilon_high) & (adv > 0)
        metrics = {
            "clip_ratio/low": (low * mask).sum() / denom,
            "clip_ratio/high": (high * mask).sum() / denom,
            "clip_ratio/region": ((low | high) * mask).sum() / denom,
            "ratio": (ratio * mask).sum() / denom,
            "tokens": tokens,
        }
        if kl is not None:
            metrics["kl"] = (kl * mask).sum() / denom
        if sampling_logprobs is not None:  # train/inference gap: trainer (old) vs engine, over sampled tokens
            d = torch.nan_to_num(old_logprobs.detach() - sampling_logprobs, nan=0.0) * mask
            metrics["gap/mean_abs"] = d.abs().sum() / denom
            metrics["gap/max_abs"] = d.abs().max()
            metrics["gap/kl"] = ((d.exp() - 1 - d) * mask).sum() / denom  # k3 estimate of KL(engine || trainer)
        if is_w is not None:
            if is_level == "sequence":
                metrics["is_weight"], metrics["is_weight/max"] = is_w.mean(), is_w.max()
                metrics["is_weight/clipped"] = (d.sum(-1).exp() > is_cap).float().mean()  # share of rows at the cap
            else:
                metrics["is_weight"] = (is_w * mask).sum() / denom
                metrics["is_weight/max"] = (is_w * mask).max()
                metrics["is_weight/clipped"] = ((d.exp() > is_cap) * mask).sum() / denom  # share of tokens at the cap
    return loss, metrics
