"""Train/inference gap metrics from the loss and the monitor's warning when the gap jumps (no vLLM needed)."""

from __future__ import annotations

import math

import torch

from agent_grpo.train.loss import grpo_loss
from agent_grpo.train.metrics import InstabilityMonitor


def test_gap_metrics_measure_trainer_minus_engine_over_sampled_tokens():
    old = torch.tensor([[0.0, -1.0, -2.0, -3.0]])
    engine = torch.tensor([[0.0, -1.5, -2.0, -9.0]])  # the last token is not sampled (mask 0)
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    _, m = grpo_loss(old.clone().requires_grad_(), old, torch.tensor([1.0]), mask, sampling_logprobs=engine, variant="dapo", epsilon_low=0.2, epsilon_high=0.28,
                     is_level="token", mask_truncated=False)
    assert math.isclose(float(m["gap/mean_abs"]), 0.25, abs_tol=1e-6)
    assert math.isclose(float(m["gap/max_abs"]), 0.5, abs_tol=1e-6)
    assert math.isclose(float(m["gap/kl"]), (math.exp(0.5) - 1 - 0.5) / 2, abs_tol=1e-6)


def test_monitor_warns_when_the_gap_jumps():
    monitor = InstabilityMonitor()
    for _ in range(4):
        assert not [w for w in monitor.check({"gap/kl": 1e-4}) if "gap" in w]
    assert [w for w in monitor.check({"gap/kl": 0.05}) if "train/inference gap" in w]
