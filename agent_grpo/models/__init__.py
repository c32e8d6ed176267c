"""Models: model families (Qwen2.5-VL, Qwen2-VL, Qwen3-VL), the tiny offline factory, chat rendering/encoding, loading."""

from agent_grpo.models.chat import (
    STOP_STRINGS,
    ChatFormat,
    Qwen2_5_VLImageTextProcessor,
    Qwen3VLImageTextProcessor,
    RenderedChat,
    build_processor,
    template_is_prefix_preserving,
    template_supports_tools,
    to_template_messages,
    tools_chat_template,
)
from agent_grpo.models.family import FAMILIES, ModelFamily, family_named
from agent_grpo.models.loading import load_policy, load_processor, save_processor
from agent_grpo.models.mrope import mm_token_type_ids, multimodal_position_ids
from agent_grpo.models.tiny import build_from_config, build_tiny_model, init_fan_in
from agent_grpo.models.tokenizer import build_tokenizer

__all__ = [
    "FAMILIES",
    "STOP_STRINGS",
    "ChatFormat",
    "ModelFamily",
    "Qwen2_5_VLImageTextProcessor",
    "Qwen3VLImageTextProcessor",
    "RenderedChat",
    "build_from_config",
    "build_processor",
    "build_tiny_model",
    "build_tokenizer",
    "family_named",
    "init_fan_in",
    "load_policy",
    "load_processor",
    "mm_token_type_ids",
    "multimodal_position_ids",
    "save_processor",
    "template_is_prefix_preserving",
    "template_supports_tools",
    "to_template_messages",
    "tools_chat_template",
]
