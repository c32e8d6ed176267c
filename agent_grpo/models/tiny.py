"""Tiny, real Qwen2.5-VL (and Qwen3-VL) models built offline, for tests, demos and CPU training.

`build_tiny_model` makes an ordinary `Qwen2_5_VLForConditionalGeneration` (the same class and code
path as Qwen2.5-VL-7B) with a few hundred thousand parameters, our small tokenizer
(`agent_grpo.models.tokenizer`) and our tools chat template, and saves it as an ordinary checkpoint
folder that `load_policy` (or `Qwen2_5_VLForConditionalGeneration.from_pretrained`) reads back.
`family="qwen3_vl"` builds a `Qwen3VLForConditionalGeneration` of the same widths instead (16 px patches,
interleaved mRoPE, DeepStack at every vision block, learned vision position embeddings) with the same tokenizer.

`build_from_config` shrinks a real checkpoint's `config.json` (Qwen2.5-VL or Qwen3-VL: few layers, small
widths) but keeps its vocabulary, special token ids and vision geometry, so real tokenizers and templates
can be exercised with random weights.

Initialisation: both re-draw every weight with `init_fan_in` (std 1/sqrt(fan_in)). With transformers'
stock init (std 0.02) a tiny model could not even memorise 64 images (DESIGN.md section 9).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    GenerationConfig,
    PreTrainedModel,
    Qwen2_5_VLConfig,
    Qwen3VLConfig,
)
from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

from agent_grpo.images import FACTOR
from agent_grpo.models.chat import Qwen2_5_VLImageTextProcessor, Qwen3VLImageTextProcessor, build_processor
from agent_grpo.models.family import QWEN2_5_VL, QWEN3_VL, ModelFamily, family_named
from agent_grpo.models.tokenizer import build_tokenizer

TINY_MIN_PIXELS = 4 * FACTOR * FACTOR  # 56 x 56: 4 visual tokens
TINY_MAX_PIXELS = 224 * 224  # 64 visual tokens


@dataclass(frozen=True)
class TinySize:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vision_hidden: int
    vision_depth: int
    vision_heads: int
    vision_intermediate: int


SIZES: dict[str, TinySize] = {
    # ~0.8 M parameters: text 128 x 2 layers, vision 64 x 2 blocks.
    "S": TinySize(128, 2, 4, 2, 256, 64, 2, 2, 128),
    # ~3.6 M parameters: text 256 x 4 layers, vision 128 x 4 blocks.
    "M": TinySize(256, 4, 4, 2, 512, 128, 4, 4, 256),
}


def mrope_section(head_dim: int) -> list[int]:
    """Qwen2.5-VL's [temporal, height, width] split of the rotary frequencies, scaled to `head_dim`.

    Qwen2.5-VL-7B uses [16, 24, 24] for head_dim 128: a quarter of the head_dim/2 frequencies for
    time, the rest shared between height and width. (Qwen3-VL's: `QWEN3_VL.mrope_section`.)
    """
    return QWEN2_5_VL.mrope_section(head_dim)


def fullatt_blocks(depth: int) -> list[int]:
    """Vision blocks with full attention (the others use windows): every 8th block and the last, as in Qwen2.5-VL."""
    return sorted({i for i in range(depth) if i % 8 == 7} | {depth - 1})


@torch.no_grad()
def init_fan_in(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-draw every weight: N(0, 1/fan_in) for linear and convolution weights, N(0, 1) for
    embeddings (a one-hot input has fan-in 1), zeros for biases, ones for norm scales.

    Deterministic for a seed (a private generator; the global RNG is untouched). Raises if a
    parameter is left uncovered, so a new module type cannot slip through with the stock init.
    """
    gen = torch.Generator().manual_seed(seed)
    covered: set[int] = set()

    def draw(p: torch.Tensor, std: float) -> None:
        p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * std)
        covered.add(id(p))

    for _, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            draw(module.weight, module.weight[0].numel() ** -0.5)
            if module.bias is not None:
                module.bias.zero_()
                covered.add(id(module.bias))
        elif isinstance(module, nn.Embedding):
            draw(module.weight, 1.0)
        elif (
            hasattr(module, "weight") and isinstance(module.weight, nn.Parameter) and module.weight.ndim == 1
        ):
            module.weight.fill_(1.0)  # LayerNorm / RMSNorm scales
            covered.add(id(module.weight))
            bias = getattr(module, "bias", None)
            if isinstance(bias, nn.Parameter):
                bias.zero_()
                covered.add(id(bias))
    missed = [name for name, p in model.named_parameters() if id(p) not in covered]
    if missed:
        raise RuntimeError(f"init_fan_in does not know how to initialise {missed[:5]}")
    return model


def tiny_config(
    size: str, vocab_size: int, token_ids: dict[str, int], family: ModelFamily = QWEN2_5_VL
) -> Qwen2_5_VLConfig | Qwen3VLConfig:
    """A small config of `family` (Qwen2.5-VL or Qwen3-VL, the same widths for both; Qwen3-VL's layout is in
    the module docstring); `token_ids` maps Qwen's special tokens to this tokenizer's ids."""
    if size not in SIZES:
        raise ValueError(f"unknown tiny model size {size!r}; choose one of {sorted(SIZES)}")
    if family not in (QWEN2_5_VL, QWEN3_VL):
        raise ValueError(f"the tiny model is built as qwen2_5_vl or qwen3_vl, not {family.name!r}")
    s = SIZES[size]
    head_dim = s.hidden // s.heads
    text = {
        "vocab_size": vocab_size,
        "hidden_size": s.hidden,
        "intermediate_size": s.intermediate,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6,
        # Short sequences: theta 1e4 leaves more of the few frequencies useful than Qwen's 1e6.
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": family.mrope_section(head_dim),
        },
        "bos_token_id": token_ids["<|endoftext|>"],
        "eos_token_id": token_ids["<|im_end|>"],
        "pad_token_id": token_ids["<|endoftext|>"],
    }
    special = {
        "image_token_id": token_ids["<|image_pad|>"],
        "video_token_id": token_ids["<|video_pad|>"],
        "vision_start_token_id": token_ids["<|vision_start|>"],
        "vision_end_token_id": token_ids["<|vision_end|>"],
    }
    if family is QWEN3_VL:  # Qwen3 names head_dim explicitly; its rotary sections interleave
        text["head_dim"] = head_dim
        text["rope_parameters"]["mrope_interleaved"] = True
        vision = _qwen3_vision(
            s.vision_depth, s.vision_hidden, s.vision_heads, s.vision_intermediate, s.hidden, s.layers
        )
        return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **special)
    text["max_window_layers"] = s.layers
    vision = {
        "depth": s.vision_depth,
        "hidden_size": s.vision_hidden,
        "intermediate_size": s.vision_intermediate,
        "num_heads": s.vision_heads,
        "out_hidden_size": s.hidden,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": fullatt_blocks(s.vision_depth),
        "tokens_per_second": 2,
    }
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **special)


def build_tiny_model(
    out_dir: str | Path | None = None, size: str = "S", seed: int = 0, family: str = "qwen2_5_vl"
) -> tuple[PreTrainedModel, Qwen2_5_VLImageTextProcessor | Qwen3VLImageTextProcessor]:
    """A tiny Qwen2.5-VL (or Qwen3-VL) with fan-in initialisation, our tokenizer, image processor and template.

    Deterministic: the same `size`, `seed` and `family` give the same weights and files. If `out_dir` is
    given the checkpoint is saved there (model, generation config, tokenizer, image processor, template).
    """
    fam = family_named(family)
    tokenizer = build_tokenizer()
    names = [
        "<|endoftext|>",
        "<|im_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
        "<|vision_start|>",
        "<|vision_end|>",
    ]
    token_ids = dict(zip(names, tokenizer.convert_tokens_to_ids(names), strict=True))
    config = tiny_config(size, len(tokenizer), token_ids, fam)
    with torch.random.fork_rng(devices=[]):  # the stock init draws from the global RNG; keep callers' state
        model = fam.model_cls(config)
    init_fan_in(model, seed)
    model.generation_config = GenerationConfig(
        bos_token_id=token_ids["<|endoftext|>"],
        eos_token_id=[token_ids["<|im_end|>"], token_ids["<|endoftext|>"]],
        pad_token_id=token_ids["<|endoftext|>"],
    )
    model.eval()
    if fam is QWEN2_5_VL:
        image_processor = Qwen2VLImageProcessorPil(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS)
    else:  # Qwen3-VL's geometry and normalisation: 16 px patches, mean = std = 0.5
        side = fam.token_side
        image_processor = Qwen2VLImageProcessorPil(
            min_pixels=4 * side * side, max_pixels=TINY_MAX_PIXELS, patch_size=fam.patch_size,
            image_mean=[0.5] * 3, image_std=[0.5] * 3,
        )
    processor = build_processor(tokenizer, image_processor, family=fam.name)
    if out_dir is not None:
        save_checkpoint(model, processor, out_dir)
    return model, processor


def _qwen3_vision(
    depth: int, hidden: int, heads: int, intermediate: int, out_hidden: int, text_layers: int, **real
) -> dict:
    """A small Qwen3-VL vision config. DeepStack taps the first blocks, at most 3 (the real model taps blocks 8,
    16 and 24 of 27) and at most one per decoder layer: tap k is added after decoder layer k, so a tap beyond
    the decoder's depth would be a weight without a gradient."""
    vision = {
        "patch_size": QWEN3_VL.patch_size,
        "spatial_merge_size": QWEN3_VL.merge_size,
        "temporal_patch_size": 2,
        "hidden_act": "gelu_pytorch_tanh",
        "num_position_embeddings": 256,  # a 16 x 16 grid of learned positions, interpolated per image
        **real,
    }
    vision.update(
        depth=depth,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_heads=heads,
        out_hidden_size=out_hidden,
        deepstack_visual_indexes=list(range(min(depth, text_layers, 3))),
    )
    return vision


def save_checkpoint(model: nn.Module, processor, out_dir: str | Path) -> Path:
    """Save model (safetensors), generation config and processor files into one ordinary checkpoint folder."""
    from agent_grpo.models.loading import save_processor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    save_processor(processor, out)
    return out


def build_from_config(
    config_path: str | Path,
    num_layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    vision_depth: int = 1,
    vision_hidden: int = 32,
    vision_heads: int = 2,
    seed: int = 0,
) -> PreTrainedModel:
    """A Qwen2.5-VL or Qwen3-VL from a real `config.json` (file or folder) cut down to a few small layers.

    Keeps the vocabulary size, special token ids and vision geometry (patch, merge; Qwen2.5-VL's window,
    Qwen3-VL's learned position grid), so the real tokenizer (`load_processor` on the same folder) and token
    ids work; weights are random (`init_fan_in`). Pair it with `agent_grpo.models.loading.load_processor(folder)`.
    """
    path = Path(config_path)
    if path.is_dir():
        path = path / "config.json"
    raw = json.loads(path.read_text())
    model_type = raw.get("model_type")
    if model_type not in (QWEN2_5_VL.name, QWEN3_VL.name):
        raise ValueError(
            f"{path} is a {model_type!r} config; build_from_config handles qwen2_5_vl and qwen3_vl"
        )
    if hidden % heads or heads % kv_heads:
        raise ValueError(
            f"hidden ({hidden}) must divide by heads ({heads}) and heads by kv_heads ({kv_heads})"
        )
    fam = family_named(model_type)
    text = {
        k: v for k, v in raw.items() if k not in ("vision_config", "architectures", "transformers_version")
    }
    text = {**text, **raw.get("text_config", {})}
    text.update(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
    )
    if fam is QWEN2_5_VL:
        text.update(max_window_layers=num_layers)
    else:  # Qwen3 names head_dim explicitly (128 in the 8B); keep it consistent with the small width
        text.update(head_dim=hidden // heads)
    rope = dict(text.pop("rope_scaling", None) or text.pop("rope_parameters", None) or {})
    rope.pop("type", None)
    rope.update(rope_type="default", mrope_section=fam.mrope_section(hidden // heads))
    rope.setdefault("rope_theta", text.pop("rope_theta", 1000000.0))
    text.pop("rope_theta", None)
    text["rope_parameters"] = rope
    for key in ("torch_dtype", "dtype", "text_config", "model_type"):
        text.pop(key, None)
    top = {
        k: raw[k]
        for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
        if k in raw
    }
    if fam is QWEN2_5_VL:
        vision = dict(raw["vision_config"])
        vision.update(
            depth=vision_depth,
            hidden_size=vision_hidden,
            intermediate_size=2 * vision_hidden,
            num_heads=vision_heads,
            out_hidden_size=hidden,
            fullatt_block_indexes=fullatt_blocks(vision_depth),
        )
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **top)
    else:
        geometry = ("patch_size", "spatial_merge_size", "temporal_patch_size", "in_channels", "hidden_act",
                    "num_position_embeddings", "initializer_range")
        real = {k: v for k, v in raw["vision_config"].items() if k in geometry}
        vision = _qwen3_vision(vision_depth, vision_hidden, vision_heads, 2 * vision_hidden, hidden, num_layers, **real)
        config = Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **top)
    with torch.random.fork_rng(devices=[]):
        model = fam.model_cls(config)
    init_fan_in(model, seed)
    return model.eval()


def describe(model: nn.Module, out_dir: str | Path | None = None) -> str:
    """One paragraph on a built model: parameters by part and, if saved, its files."""
    n_vision = sum(p.numel() for n, p in model.named_parameters() if ".visual." in f".{n}")
    n_total = sum(p.numel() for p in model.parameters())
    cfg = model.config.text_config
    title = family_named(model.config.model_type).title
    lines = [
        f"{title}: {n_total:,} parameters ({n_total - n_vision:,} language, {n_vision:,} vision); "
        f"text {cfg.hidden_size} x {cfg.num_hidden_layers} layers, vocabulary {cfg.vocab_size}"
    ]
    if out_dir is not None:
        for f in sorted(Path(out_dir).iterdir()):
            lines.append(f"  {f.name}  {f.stat().st_size:,} bytes")
    return "\n".join(lines)
