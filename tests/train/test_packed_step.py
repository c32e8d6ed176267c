"""A GRPO step on packed rows equals the step on right-padded rows; the padding share is logged; no step
makes a vocabulary-sized activation (issue 13, issue 11 item 9)."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import ValidationError
from test_update_step import rollout
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from agent_grpo.rollout.packing import PackedBatch
from agent_grpo.train.config import LossConfig, ModelConfig, OptimConfig
from agent_grpo.train.policy import build_policy
from agent_grpo.train.sft_loss import sft_update
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
    short.messages = short.messages[:2]  # the prompt only: the batch check pairs each shown image with its part
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
        torch.testing.assert_close(p - base[name], q - base[name], rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


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
    with pytest.raises(ValidationError):
        OptimConfig(packing="sometimes")


class VocabActivations(TorchDispatchMode):
    """Records the largest tensor with the vocabulary as last dimension that any op (forward or backward) makes."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.rows = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:  # e.g. lm_head.weight.T, [H, V]: no new memory
            return out
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == self.vocab:
                self.rows = max(self.rows, t.numel() // self.vocab)
        return out


@pytest.mark.parametrize("packing", ["never", "always"])
def test_a_training_step_never_materialises_a_vocabulary_sized_activation(setting, packing):
    """Issue 11 item 9 / issue 13: no [B, T, V] (or [N, V]) tensor anywhere in the update, forward or backward,
    with the old-policy and reference forwards on: at most one head chunk of rows has the vocabulary as width."""
    model, trajs, chat, budget = setting
    model = copy.deepcopy(model)
    vocab = model.config.text_config.vocab_size
    trained = sum(sum(len(s.token_ids) for s in t.segments if s.kind == "sampled") for t in trajs)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with VocabActivations(vocab) as seen:
        grpo_update(
            model, optimizer, None, trajs, chat, budget, LossConfig(num_iterations=2, beta=0.1), temperature=1.0,
            micro_batch_tokens=4096, max_grad_norm=1.0, max_completion_length=192, packing=packing,
            ref_model=copy.deepcopy(model), head_chunk_tokens=16,
        )
    assert 0 < seen.rows <= 16 < trained
    with VocabActivations(vocab) as seen:
        sft_update(model, optimizer, None, trajs, chat, budget, micro_batch_tokens=4096, max_grad_norm=1.0,
                   packing=packing, head_chunk_tokens=16)
    assert 0 < seen.rows <= 16
