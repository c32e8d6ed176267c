"""The policy to train: load or build it, then freeze, adapt (LoRA) or checkpoint what the config says."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from agent_grpo.train.config import ModelConfig

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def vision_tower(model) -> torch.nn.Module:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model.visual


def build_policy(cfg: ModelConfig, seed: int = 0, device: str | torch.device = "cpu"):
    """(model, processor) ready for training: dtype, frozen vision tower, LoRA, gradient checkpointing."""
    if cfg.path == "tiny":
        from agent_grpo.models.tiny import build_tiny_model

        model, processor = build_tiny_model(size=cfg.tiny_size, seed=seed, family=cfg.family or "qwen2_5_vl")
    else:
        from agent_grpo.models.loading import load_policy

        model, processor = load_policy(cfg.path, dtype=_DTYPES[cfg.dtype], device=device, family=cfg.family)
    model.to(device=device, dtype=_DTYPES[cfg.dtype])
    if cfg.freeze_vision:
        for p in vision_tower(model).parameters():
            p.requires_grad_(False)
    set_gradient_checkpointing(model, cfg.gradient_checkpointing, cfg.vision_gradient_checkpointing)
    if cfg.compile:
        compile_layers(model)
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        # Only the language model is adapted: a regex over full module names (peft uses fullmatch).
        targets = "|".join(cfg.lora_targets)
        lora = LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=rf".*language_model.*\.({targets})",
        )
        model = get_peft_model(model, lora)
    return model, processor


def set_gradient_checkpointing(model, language: bool, vision: bool | None = None) -> None:
    """Recompute the language model's decoder layers and/or the vision tower's blocks in the backward.

    `vision=None` follows `language`. transformers switches every `GradientCheckpointingLayer` on at
    once; the part that should not recompute is switched back off."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    vision = language if vision is None else vision
    if not (language or vision):
        return
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    visual = vision_tower(model)
    in_vision = {id(m) for m in visual.modules()}
    for m in model.modules():
        if isinstance(m, GradientCheckpointingLayer):
            m.gradient_checkpointing = vision if id(m) in in_vision else language


def compile_layers(model) -> None:
    """`torch.compile` each repeated layer (decoder layers, vision blocks) in place: regional compilation
    compiles one layer's graph once for all its copies, and leaves the mRoPE index and the logprob
    head (data-dependent shapes) eager."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    for m in model.modules():
        if isinstance(m, GradientCheckpointingLayer):
            m.compile(dynamic=True)


def reference_model(model, cfg: ModelConfig):
    """A frozen copy for the KL term; with LoRA none is kept (the adapters are switched off instead)."""
    if cfg.lora:
        return None
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def load_weights(model, checkpoint_model_dir: Path) -> None:
    """Load weights saved by `save_checkpoint` into `model` (full weights or a LoRA adapter)."""
    checkpoint_model_dir = Path(checkpoint_model_dir)
    if (checkpoint_model_dir / "adapter_model.safetensors").exists():
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(checkpoint_model_dir / "adapter_model.safetensors")))
        return
    # from_pretrained applies the same key conversions that save_pretrained wrote.
    fresh = type(model).from_pretrained(checkpoint_model_dir, dtype=next(model.parameters()).dtype)
    missing, unexpected = model.load_state_dict(fresh.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise ValueError(f"checkpoint {checkpoint_model_dir} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
