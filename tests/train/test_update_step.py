"""One `grpo_update` on real multi-turn, multi-image trajectories of the tiny model changes only what it should."""

from __future__ import annotations

import contextlib

import pytest
import torch
from trainer_fixtures import params_of
from zoom_fixtures import TWO_ZOOMS, ForceScript, ZoomEnv, zoom_call

from agent_grpo.models.chat import ChatFormat
from agent_grpo.models.mrope import multimodal_position_ids
from agent_grpo.rollout import (
    HFEngine,
    RolloutConfig,
    RolloutDriver,
    SamplingParams,
    assemble_batch,
    forward_logprobs,
)
from agent_grpo.tools import load_tools
from agent_grpo.train.config import LossConfig, ModelConfig
from agent_grpo.train.policy import build_policy, vision_tower
from agent_grpo.train.step import grpo_update
from agent_grpo.trajectory import Termination

torch.set_num_threads(1)

# Sample 0: zoom, zoom the zoom, answer. Sample 1: another pair of zooms, then a wrong answer.
SCRIPTS = [TWO_ZOOMS, [zoom_call([224, 224, 448, 448]), zoom_call([0, 0, 112, 112], image=1), "<answer>7</answer>"]]


def rollout(model, processor):
    """Two 3-turn trajectories with 3 images each (the task image and two crops), advantages +1 / -1."""
    chat = ChatFormat(processor)
    env = ZoomEnv(tools=load_tools().subset(["zoom_in"]))
    script = ForceScript(chat, lambda key, turn: SCRIPTS[int(key.rsplit("-", 1)[1])][turn])
    config = RolloutConfig(group_size=2, max_total_tokens=1024, sampling=SamplingParams(max_new_tokens=64))
    trajs = RolloutDriver(env, HFEngine(model, chat, logits_processors=script), chat, config).rollout(env.load_tasks(n=1))
    env.shutdown()
    assert [t.termination for t in trajs] == [Termination.ANSWERED] * 2
    assert [len(t.images) for t in trajs] == [3, 3] and [len(t.turns) for t in trajs] == [3, 3]
    trajs[0].advantage, trajs[1].advantage = 1.0, -1.0  # by hand: the scripted rewards would do too
    return trajs, chat, env.budget


def update(model, trajs, chat, budget, lr=1e-2, **loss):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    # A small token budget: one micro-batch per trajectory, so gradients accumulate over two backwards.
    return grpo_update(
        model, optimizer, None, trajs, chat, budget, LossConfig(**loss), temperature=1.0,
        micro_batch_tokens=300, max_grad_norm=1.0, max_completion_length=192,
    )


def changed(before, model) -> dict[str, bool]:
    return {k: not torch.equal(before[k], v) for k, v in model.named_parameters()}


def test_freeze_vision_keeps_the_tower_bit_identical_and_trains_the_language_model():
    model, processor = build_policy(ModelConfig(freeze_vision=True), seed=0)
    trajs, chat, budget = rollout(model, processor)
    before = params_of(model)
    metrics = update(model, trajs, chat, budget)
    assert metrics["micro_batches"] == 2.0 and metrics["grad_norm"] > 0
    diff = changed(before, model)
    vision = {f"model.visual.{k}" for k, _ in vision_tower(model).named_parameters()}
    assert vision and all(k in diff for k in vision)
    assert not any(diff[k] for k in vision)  # torch.equal on every vision parameter
    language = [k for k in diff if k not in vision]
    for layer in range(2):  # every attention and MLP projection of the language model moved
        for proj in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"):
            assert diff[f"model.language_model.layers.{layer}.{proj}.weight"]
    assert sum(diff[k] for k in language) >= 0.9 * len(language)


def test_without_freezing_the_vision_tower_trains_too():
    model, processor = build_policy(ModelConfig(), seed=0)
    trajs, chat, budget = rollout(model, processor)
    before = params_of(model)
    update(model, trajs, chat, budget)
    diff = changed(before, model)
    assert any(diff[f"model.visual.{k}"] for k, _ in vision_tower(model).named_parameters())


def test_lora_changes_only_adapter_weights():
    model, processor = build_policy(ModelConfig(lora=True, lora_r=4), seed=0)
    trajs, chat, budget = rollout(model, processor)
    before = params_of(model)
    update(model, trajs, chat, budget)
    diff = changed(before, model)
    lora = [k for k in diff if "lora_" in k]
    assert len(lora) == 2 * 4 * 2  # A and B of q, k, v, o in both language layers; none in the vision tower
    assert all("language_model" in k for k in lora)
    assert not any(diff[k] for k in diff if "lora_" not in k)  # base weights bit-identical
    assert all(diff[k] for k in lora if "lora_B" in k)
    # lora_B starts at 0, so lora_A has no gradient at the first step; it moves at the second.
    update(model, trajs, chat, budget)
    diff = changed(before, model)
    assert all(diff[k] for k in lora if "lora_A" in k)
    assert not any(diff[k] for k in diff if "lora_" not in k)


def only_turn(traj, turn):
    """A copy whose loss covers the sampled tokens of one turn: the other turns become context."""
    segments = [s if s.kind != "sampled" or s.turn == turn else s.model_copy(update={"kind": "injected", "logprobs": None})
                for s in traj.segments]
    return traj.model_copy(update={"segments": segments})


@pytest.mark.parametrize("turn", [1, 2])
def test_gradients_reach_the_tokens_of_later_turns(turn):
    model, processor = build_policy(ModelConfig(), seed=0)
    trajs, chat, budget = rollout(model, processor)
    masked = [only_turn(t, turn) for t in trajs]
    batch = assemble_batch(masked, chat, budget)
    full = assemble_batch(trajs, chat, budget)
    sampled = [s for s in trajs[0].segments if s.kind == "sampled"]
    assert int(batch.loss_mask[0].sum()) == len(sampled[turn].token_ids)
    assert torch.equal(batch.input_ids, full.input_ids)  # same tokens and images, less loss

    # A loss on turn `turn`'s tokens alone: gradient reaches the language model and, through the
    # crops shown in earlier turns, the vision tower.
    lp, _ = forward_logprobs(model, batch)
    (-(lp * batch.loss_mask).sum()).backward()
    lm = sum(float(p.grad.abs().sum()) for n, p in model.named_parameters() if "language_model" in n)
    vis = sum(float(p.grad.abs().sum()) for p in vision_tower(model).parameters())
    assert lm > 0 and vis > 0
    model.zero_grad(set_to_none=True)

    # The logits at the positions that predict that turn's tokens carry the gradient.
    embeds = model.get_input_embeddings()(batch.input_ids).detach().requires_grad_(True)
    positions = batch.loss_mask[0].nonzero().squeeze(1)
    out = model(inputs_embeds=embeds, attention_mask=batch.attention_mask, pixel_values=batch.pixel_values,
                image_grid_thw=batch.image_grid_thw, mm_token_type_ids=batch.mm_token_type_ids, use_cache=False,
                position_ids=multimodal_position_ids(model, batch.input_ids, batch.attention_mask, batch.image_grid_thw),
                input_ids=None)
    out.logits[0, positions - 1].logsumexp(-1).sum().backward()
    assert embeds.grad[0, positions - 1].abs().sum(-1).gt(0).all()

    # And one grpo_update on that loss alone moves the language model.
    before = params_of(model)
    metrics = update(model, masked, chat, budget)
    assert metrics["tokens"] == float(batch.loss_mask.sum())
    assert changed(before, model)["model.language_model.layers.0.self_attn.q_proj.weight"]


def test_lora_reference_is_the_base_model_and_several_passes_clip():
    """beta > 0 with LoRA: the adapters switched off are the reference (KL 0 until they move)."""
    model, processor = build_policy(ModelConfig(lora=True, lora_r=4), seed=0)
    trajs, chat, budget = rollout(model, processor)
    before = params_of(model)
    metrics = update(model, trajs, chat, budget, lr=0.05, beta=0.1, num_iterations=3)
    assert metrics["kl"] > 0  # the second and third passes see moved adapters
    assert 0 < metrics["clip_ratio/region"] < 1  # and ratios away from 1 (lr is large on purpose)
    assert not any(changed(before, model)[k] for k in before if "lora_" not in k)


class GradRecorder(torch.optim.SGD):
    """Records the gradients it is asked to apply (and applies nothing)."""

    def step(self, closure=None):
        self.grads = [p.grad.clone() for g in self.param_groups for p in g["params"]]


class OtherRank:
    """What `grpo_update` needs from an `Accelerator`, for one process of two; the other process
    contributes `other_tokens` loss tokens to the global count."""

    num_processes = 2

    def __init__(self, other_tokens: float):
        self.other_tokens = other_tokens

    def unwrap_model(self, model):
        return model

    def reduce(self, tensor, reduction):
        assert reduction == "sum"
        return tensor + self.other_tokens

    def no_sync(self, model):
        return contextlib.nullcontext()

    def backward(self, loss):
        loss.backward()

    def clip_grad_norm_(self, params, max_norm):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)


@pytest.mark.parametrize("variant", ["dapo", "grpo"])
def test_two_processes_averaging_their_gradients_equal_one_process_on_the_whole_batch(variant):
    model, processor = build_policy(ModelConfig(), seed=0)
    trajs, chat, budget = rollout(model, processor)
    tokens = [float(assemble_batch([t], chat, budget).loss_mask.sum()) for t in trajs]
    assert tokens[0] != tokens[1]  # dapo's global count matters

    def grads(part, accelerator=None):
        opt = GradRecorder(model.parameters(), lr=0.0)
        grpo_update(model, opt, None, part, chat, budget, LossConfig(variant=variant), temperature=1.0,
                    micro_batch_tokens=8192, max_grad_norm=1e9, max_completion_length=192, accelerator=accelerator)
        return opt.grads

    whole = grads(trajs)
    rank0, rank1 = grads(trajs[:1], OtherRank(tokens[1])), grads(trajs[1:], OtherRank(tokens[0]))
    for g, a, b in zip(whole, rank0, rank1, strict=True):  # DDP averages the two processes' gradients
        torch.testing.assert_close((a + b) / 2, g, rtol=1e-4, atol=1e-7)
