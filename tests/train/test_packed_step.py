"""A GRPO step on packed rows equals the step on right-padded rows; the padding share is logged (issue 13)."""

from __future__ import annotations

import copy

import pytest
import torch
from test_update_step import rollout

from agent_grpo.rollout.packing import PackedBatch
from agent_grpo.train.config import LossConfig, ModelConfig, OptimConfig
from agent_grpo.train.policy import build_policy
from agent_grpo.train.step import build_micro_batches, grpo_update

torch.set_num_threads(1)
pytestmark = pytest.mark.slow  # one multi-turn rollout, then full steps


@pytest.fixture(scope="module")
def setting():
    model, processor = build_policy(ModelConfig(), seed=0)
    trajs, chat, budget = rollout(model, processor)
    # a third, shorter row: padding in the padded layout
    short = copy.deepcopy(trajs[1])
    short.segments = short.segments[:2]
    short.images = short.images[:1]
    short.id, short.advantage = "short", 0.5
    return model, [*trajs, short], chat, budget


def step(model, trajs, chat, budget, packing, **loss):
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    metrics = grpo_update(
        model, optimizer, None, trajs, chat, budget, LossConfig(**loss), temperature=1.0,
        micro_batch_tokens=4096, max_grad_norm=1e9, max_completion_length=192, packing=packing,
    )
    return model, metrics


@pytest.mark.parametrize("variant", ["dapo", "grpo"])
def test_packed_step_equals_padded_step(setting, variant):
    model, trajs, chat, budget = setting
    padded, m_padded = step(model, trajs, chat, budget, "never", variant=variant)
    packed, m_packed = step(model, trajs, chat, budget, "always", variant=variant)
    assert m_padded["padding_share"] > 0.05 and m_packed["padding_share"] == 0.0
    assert m_packed["micro_batches"] == m_padded["micro_batches"] == 1.0
    assert m_packed["loss"] == pytest.approx(m_padded["loss"], abs=1e-6)
    assert m_packed["grad_norm"] == pytest.approx(m_padded["grad_norm"], rel=1e-5)
    # SGD with lr 1: the parameter change is the gradient itself
    base = dict(model.named_parameters())
    for name, p in packed.named_parameters():
        q = dict(padded.named_parameters())[name]
        torch.testing.assert_close(p - base[name], q - base[name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_packed_micro_batches_are_balanced_by_tokens(setting):
    model, trajs, chat, budget = setting
    sizes = [sum(len(s.token_ids) for s in t.segments) for t in trajs]
    batches, chunks = build_micro_batches(trajs, chat, budget, max(sizes) + 1, pack=True, device="cpu")
    assert all(isinstance(b, PackedBatch) for b in batches)
    assert [b.trajectory_ids for b in batches] == [[t.id for t in c] for c in chunks]
    assert sorted(t.id for c in chunks for t in c) == sorted(t.id for t in trajs)
    loads = [int(b.attention_mask.sum()) for b in batches]
    assert all(n <= max(sizes) + 1 for n in loads) and len(batches) == 3 - (sizes[2] + min(sizes[:2]) <= max(sizes))


def test_packing_setting_is_in_the_config():
    assert OptimConfig().packing == "auto"
    with pytest.raises(Exception):
        OptimConfig(packing="sometimes")
