"""Load a policy checkpoint (model + processor) through the normal transformers path.

Supported model types (config.json `model_type`): `qwen2_5_vl`, `qwen2_vl` and `qwen3_vl` (see
`agent_grpo.models.family`); all three take the same inputs here (`<|image_pad|>` tokens, `pixel_values`,
`image_grid_thw`, `mm_token_type_ids`). The processor is always built from the checkpoint's tokenizer and the
PIL image processor (`Qwen2VLImageProcessorPil`, configured from the checkpoint's preprocessor config: patch
14 or 16), so torchvision is never needed. If the checkpoint's chat template cannot render tools, or is not
prefix-preserving, the family's template of ours (`chat.tools_chat_template(family)`) is installed instead,
and a log line says so.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, Qwen3VLProcessor
from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

from agent_grpo.models.chat import (
    Qwen2_5_VLImageTextProcessor,
    Qwen3VLImageTextProcessor,
    build_processor,
    template_is_prefix_preserving,
    template_supports_tools,
    tools_chat_template,
)
from agent_grpo.models.family import FAMILIES, family_named

logger = logging.getLogger(__name__)

MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {name: f.model_cls for name, f in FAMILIES.items()}
# What `save_processor` writes as `processor_class`, so other tools load the folder as usual.
PROCESSOR_CLASS_NAMES = {name: f.processor_class for name, f in FAMILIES.items()}


def model_type_of(path_or_name: str | Path) -> str:
    """The `model_type` in a checkpoint's config.json (local folder or, where reachable, a hub name)."""
    path = Path(path_or_name)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ValueError(f"{path} has no config.json: is it a model checkpoint folder?")
        model_type = json.loads(config_file.read_text()).get("model_type")
    else:
        try:
            model_type = AutoConfig.from_pretrained(str(path_or_name)).model_type
        except (OSError, ValueError) as e:
            raise ValueError(
                f"cannot read a model config for {str(path_or_name)!r}: {e}. Pass a local checkpoint folder "
                "(e.g. one made by `agent-grpo model tiny DIR`)"
            ) from e
    if model_type not in MODEL_CLASSES:
        raise ValueError(
            f"model type {model_type!r} of {path_or_name} is not supported; supported types are "
            f"{', '.join(sorted(MODEL_CLASSES))} ({', '.join(FAMILIES[k].title for k in sorted(FAMILIES))})"
        )
    return model_type


def load_policy(
    path_or_name: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    chat_template: str | None = None,
    family: str | None = None,
) -> tuple[PreTrainedModel, Qwen2_5_VLImageTextProcessor | Qwen3VLImageTextProcessor]:
    """Load (model, processor) from a checkpoint; see the module docstring for what is supported.

    `family`, if given, must be the checkpoint's `model_type` (a config naming one family for a checkpoint of
    another is refused, naming both)."""
    model_type = model_type_of(path_or_name)
    if family is not None and family_named(family).name != model_type:
        raise ValueError(
            f"model.family is {family!r} but {path_or_name} is a {model_type!r} checkpoint; "
            f"set model.family to {model_type!r} (or leave it unset to follow the checkpoint)"
        )
    model = MODEL_CLASSES[model_type].from_pretrained(str(path_or_name), dtype=dtype)
    model.to(device)
    processor = load_processor(path_or_name, chat_template=chat_template)
    return model, processor


def load_processor(
    path_or_name: str | Path, chat_template: str | None = None
) -> Qwen2_5_VLImageTextProcessor | Qwen3VLImageTextProcessor:
    """Tokenizer + PIL image processor + a tools-capable, prefix-preserving chat template."""
    name = str(path_or_name)
    family = _processor_family(path_or_name)
    tokenizer = AutoTokenizer.from_pretrained(name)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(name)
    template = chat_template or _checkpoint_template(path_or_name, tokenizer)
    if chat_template is None:
        reason = None
        if not template:
            reason = "has no chat template"
        elif not template_supports_tools(template):
            reason = "has a chat template without a tools section"
        elif not template_is_prefix_preserving(template):
            reason = "has a chat template that is not prefix-preserving"
        if reason:
            logger.info("%s %s: installing agent-grpo's %s tools chat template", name, reason, family.title)
            template = tools_chat_template(family.name)
    return build_processor(tokenizer, image_processor, template, family=family.name)


def save_processor(processor, out_dir: str | Path, model_type: str | None = None) -> None:
    """Write tokenizer files, preprocessor_config.json and chat_template.jinja, hub-style.

    `processor_class` is written as the stock class of `model_type` (not our image-only subclass),
    so the folder reads as an ordinary checkpoint elsewhere (vLLM, AutoProcessor with torchvision).
    `model_type=None` follows the processor: `qwen3_vl` for a Qwen3-VL processor, else `qwen2_5_vl`.
    """
    if model_type is None:
        model_type = "qwen3_vl" if isinstance(processor, Qwen3VLProcessor) else "qwen2_5_vl"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor.tokenizer.save_pretrained(out)
    processor.image_processor.save_pretrained(out)
    (out / "chat_template.jinja").write_text(processor.chat_template, encoding="utf-8")
    for name in ("tokenizer_config.json", "preprocessor_config.json"):
        path = out / name
        data = json.loads(path.read_text())
        data["processor_class"] = PROCESSOR_CLASS_NAMES[model_type]
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _checkpoint_template(path_or_name: str | Path, tokenizer) -> str | None:
    template = tokenizer.chat_template
    if isinstance(template, dict):  # named templates: take the default one
        template = template.get("default")
    path = Path(path_or_name)
    if not template and path.is_dir():
        if (path / "chat_template.jinja").is_file():
            template = (path / "chat_template.jinja").read_text(encoding="utf-8")
        elif (path / "chat_template.json").is_file():
            template = json.loads((path / "chat_template.json").read_text())["chat_template"]
    return template or None


def _processor_family(path_or_name: str | Path):
    """The checkpoint's family; a local folder of processor files only (no config.json) counts as Qwen2.5-VL."""
    path = Path(path_or_name)
    if path.is_dir() and not (path / "config.json").is_file():
        return family_named("qwen2_5_vl")
    return family_named(model_type_of(path_or_name))
