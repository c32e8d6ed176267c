"""Precision and memory levers of the train config are wired (issue 13): gradient checkpointing per part,
fp32 master weights for a bf16 model, regional torch.compile."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from agent_grpo.errors import ConfigError
from agent_grpo.models.tiny import build_tiny_model
from agent_grpo.train.config import ModelConfig, OptimConfig
from agent_grpo.train.policy import build_policy, compile_layers, set_gradient_checkpointing, vision_tower
from agent_grpo.train.precision import MasterWeightAdamW, build_optimizer

torch.set_num_threads(1)


def inputs(model, processor):
    from PIL import Image

    img = Image.new("RGB", (56, 56), (200, 30, 30))
    pad = model.config.image_token_id
    vision = processor.image_processor(images=[img], return_tensors="pt")
    n = int(vision["image_grid_thw"].prod()) // 4
    ids = torch.tensor([[5, 6, model.config.vision_start_token_id, *([pad] * n), model.config.vision_end_token_id,
                         7, 8, 9, 10, 11, 12]])
    return {"input_ids": ids, "mm_token_type_ids": (ids == pad).int(), "pixel_values": vision["pixel_values"],
            "image_grid_thw": vision["image_grid_thw"]}


def flags(model):
    visual = {id(m) for m in vision_tower(model).modules()}
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    return ({m.gradient_checkpointing for m in layers if id(m) not in visual},
            {m.gradient_checkpointing for m in layers if id(m) in visual})


def grads_and_recomputes(model, batch):
    model = model.train()
    calls = []
    first = model.model.language_model.layers[0]
    block = vision_tower(model).blocks[0]
    hooks = [first.register_forward_pre_hook(lambda *a: calls.append("lm")),
             block.register_forward_pre_hook(lambda *a: calls.append("vision"))]
    model(**batch, use_cache=False).logits.float().logsumexp(-1).sum().backward()
    for h in hooks:
        h.remove()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, calls.count("lm"), calls.count("vision")


@pytest.mark.parametrize(("language", "vision"), [(True, False), (False, True), (True, None)])
def test_gradient_checkpointing_per_part_recomputes_only_that_part_with_the_same_gradients(language, vision):
    model, processor = build_tiny_model(size="S", seed=0)
    batch = inputs(model, processor)
    plain, lm_calls, vis_calls = grads_and_recomputes(copy.deepcopy(model), batch)
    assert (lm_calls, vis_calls) == (1, 1)
    set_gradient_checkpointing(model, language, vision)
    want_vision = language if vision is None else vision
    assert flags(model) == ({language}, {want_vision})
    got, lm_calls, vis_calls = grads_and_recomputes(model, batch)
    assert (lm_calls, vis_calls) == (1 + language, 1 + want_vision)  # a checkpointed layer runs again in backward
    for name, g in plain.items():
        torch.testing.assert_close(got[name], g, rtol=0, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


def test_build_policy_reads_the_checkpointing_fields():
    model, _ = build_policy(ModelConfig(gradient_checkpointing=True, vision_gradient_checkpointing=False))
    assert flags(model) == ({True}, {False})
    model, _ = build_policy(ModelConfig(vision_gradient_checkpointing=True))
    assert flags(model) == ({False}, {True})


def test_fp32_master_weights_for_a_bf16_model():
    model, processor = build_tiny_model(size="S", seed=0)
    model = model.to(torch.bfloat16)
    batch = inputs(model, processor)
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    cfg = ModelConfig(dtype="bfloat16", master_weights="float32")
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], OptimConfig(lr=1e-3), cfg)
    assert isinstance(optimizer, MasterWeightAdamW)
    masters = [p for g in optimizer.param_groups for p in g["params"]]
    assert all(m.dtype == torch.float32 for m in masters)
    for _ in range(2):  # two micro-batches: the gradient accumulates in float32 on the masters
        model(**batch, use_cache=False).logits.float().logsumexp(-1).mean().backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(m.grad is not None and m.grad.dtype == torch.float32 for m in masters)
    before = [m.detach().clone() for m in masters]
    torch.nn.utils.clip_grad_norm_(masters, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert all(m.dtype == torch.float32 for m in masters)
    assert any(not torch.equal(a, b) for a, b in zip(before, masters, strict=True))
    for p, m in zip(optimizer.model_params, masters, strict=True):
        assert torch.equal(p, m.to(torch.bfloat16))  # the model holds the masters' rounding
    # an update smaller than bf16's resolution still moves the fp32 master (bf16 alone would drop it)
    assert any(not torch.equal(m, m.to(torch.bfloat16).float()) for m in masters)

    # the masters travel with the optimizer state: a fresh optimizer continues from them exactly
    state = optimizer.state_dict()
    assert all("master" in s for s in state["state"].values())
    other_model = copy.deepcopy(model)
    with torch.no_grad():
        for p in other_model.parameters():
            p.zero_()
    other = build_optimizer([p for p in other_model.parameters() if p.requires_grad], OptimConfig(lr=1e-3), cfg)
    other.load_state_dict(state)
    for a, b in zip(other.masters, masters, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(other.model_params, optimizer.model_params, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(other.state[other.masters[0]]["exp_avg"], optimizer.state[masters[0]]["exp_avg"])


def test_master_weights_refused_under_several_processes_and_ignored_in_float32():
    model, _ = build_tiny_model(size="S", seed=0)
    params = list(model.parameters())
    with pytest.raises(ConfigError, match="one process"):
        build_optimizer(params, OptimConfig(), ModelConfig(dtype="bfloat16", master_weights="float32"), 2)
    assert type(build_optimizer(params, OptimConfig(), ModelConfig(master_weights="float32"))) is torch.optim.AdamW


def test_compile_wraps_every_repeated_layer():
    model, _ = build_tiny_model(size="S", seed=0)
    compile_layers(model)  # lazy: nothing is compiled until a layer first runs
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert len(layers) == 4 and all(m._compiled_call_impl is not None for m in layers)
    assert ModelConfig(compile=True).compile
