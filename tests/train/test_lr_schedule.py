"""The learning-rate schedule is laid out in training steps, whatever `loss.num_iterations` is."""

from __future__ import annotations

import pytest
import torch
from zoom_fixtures import TWO_ZOOMS, ZoomEnv

from agent_grpo.models.chat import ChatFormat
from agent_grpo.models.tiny import build_tiny_model
from agent_grpo.recipes.grpo import lr_lambda, lr_scheduler
from agent_grpo.rollout import RolloutConfig, RolloutDriver, SamplingParams, ScriptedEngine
from agent_grpo.tools import load_tools
from agent_grpo.train.config import TrainConfig
from agent_grpo.train.step import grpo_update

torch.set_num_threads(1)


def config(steps, warmup, schedule, num_iterations):
    return TrainConfig(steps=steps, optim={"lr": 1.0, "warmup_steps": warmup, "schedule": schedule},
                       loss={"num_iterations": num_iterations})


def intended(step, steps, warmup):
    """The linear schedule by training step, worked by hand: warm-up (k+1)/warmup, then 1 -> 0."""
    return (step + 1) / warmup if step < warmup else 1 - (step - warmup) / (steps - warmup)


@pytest.mark.parametrize("num_iterations", [1, 2, 3])
def test_every_pass_of_a_step_trains_at_that_step_s_rate(num_iterations):
    steps, warmup = 10, 2
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = lr_scheduler(optimizer, config(steps, warmup, "linear", num_iterations))
    seen = []
    for _ in range(steps):  # as grpo_update does: an optimizer step and a scheduler step per pass
        passes = []
        for _ in range(num_iterations):
            passes.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        seen.append(passes)
    assert seen == [[pytest.approx(intended(k, steps, warmup))] * num_iterations for k in range(steps)]
    assert min(min(p) for p in seen) == pytest.approx(0.125)  # the last step: 1 - 7/8, never 0


def test_warm_up_lasts_the_configured_training_steps_with_cosine():
    factor = lr_lambda(config(8, 4, "cosine", 2), passes_per_step=2)
    assert [factor(i) for i in range(8)] == pytest.approx([0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0])
    assert factor(15) == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi * 3 / 4)).item()))


@pytest.mark.slow
def test_grpo_update_with_two_passes_follows_the_schedule():
    """The real update loop, two passes per step, the recipe's scheduler: lr per optimizer pass, recorded."""
    model, processor = build_tiny_model(size="S", seed=0)
    chat = ChatFormat(processor)
    env = ZoomEnv(tools=load_tools().subset(["zoom_in"]))
    driver = RolloutDriver(env, ScriptedEngine(lambda r: TWO_ZOOMS[2], chat), chat,
                           RolloutConfig(group_size=2, sampling=SamplingParams(max_new_tokens=32)))
    trajs = driver.rollout(env.load_tasks(n=1))
    env.shutdown()
    trajs[0].advantage, trajs[1].advantage = 1.0, -1.0
    cfg = config(4, 2, "linear", 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = lr_scheduler(optimizer, cfg)
    lrs = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: lrs.append(opt.param_groups[0]["lr"]))
    logged = []
    for _ in range(cfg.steps):
        m = grpo_update(model, optimizer, scheduler, trajs, chat, env.budget, cfg.loss, temperature=1.0,
                        micro_batch_tokens=4096, max_grad_norm=1.0, max_completion_length=32)
        logged.append(m["lr"])
    # steps 0..3 at 1e-3 x [0.5, 1, 1, 0.5], each for both of its passes (was: [.5, 1, 1, .5, 0, 0, 0, 0]).
    assert lrs == pytest.approx([1e-3 * f for f in (0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5)])
    # the metric is the rate the step trained at (was the next step's: [1, 1, 0.5, 0])
    assert logged == pytest.approx([1e-3 * f for f in (0.5, 1.0, 1.0, 0.5)])
