"""The real Qwen2.5-VL tokenizer: its multi-token `</answer>` ends a turn in vLLM exactly as in HF.

A model built from the real config (152k vocabulary, random weights) is wired to continue a fixed token
chain: every layer's output projections are zeroed (the residual stream carries the input embedding) and
the LM head maps each chain token's normalised embedding to the next chain token. Both engines then
generate "3</answer> more" greedily and must cut after `>`, the token completing `</answer>`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

spec = importlib.util.find_spec("vllm")
if spec is None or spec.origin is None:
    pytest.skip("vLLM is not installed (bash scripts/setup_vllm.sh)", allow_module_level=True)

from agent_grpo.models.chat import ChatFormat  # noqa: E402
from agent_grpo.models.loading import load_processor  # noqa: E402
from agent_grpo.models.tiny import build_from_config  # noqa: E402
from agent_grpo.rollout import HFEngine  # noqa: E402
from agent_grpo.rollout.engine import GenRequest, SamplingParams  # noqa: E402
from agent_grpo.rollout.vllm_engine import VLLMEngine  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "qwen2_5_vl_7b_instruct"


def chain_model(chat, prompt_ids, text):
    model = build_from_config(FIXTURE, num_layers=1, hidden=128, heads=4, kv_heads=2, vision_depth=1)
    chain = [prompt_ids[-1], *chat.tokenizer.encode(text, add_special_tokens=False)]
    assert len(set(chain)) == len(chain)
    lm = model.model.language_model
    with torch.no_grad():
        for layer in lm.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for a, b in zip(chain, chain[1:], strict=False):
            e = lm.embed_tokens.weight[a]
            h = e / e.pow(2).mean().sqrt()  # what the final RMSNorm (weight 1) makes of it
            model.lm_head.weight[b] = h * (10.0 / h.numel())  # logit 10 for the next chain token, ~0 for the rest
    return model.eval(), chain


def test_multi_token_answer_close_ends_the_turn_as_in_hf():
    processor = load_processor(FIXTURE)
    chat = ChatFormat(processor)
    assert "</answer>" in chat.stop_strings and "</answer>" not in chat.tokenizer.get_vocab()
    ids = chat.encode("<|im_start|>user\nWhich digit?<|im_end|>\n<|im_start|>assistant\n")
    model, chain = chain_model(chat, ids, "3</answer> more")
    engine = VLLMEngine(model, processor, chat, max_images=1, max_model_len=256)
    try:
        params = SamplingParams(greedy=True, max_new_tokens=12)
        ours = engine.generate([GenRequest(token_ids=ids, key="a")], params)[0]
        ref = HFEngine(model, chat).generate([GenRequest(token_ids=ids, key="a")], params)[0]
    finally:
        engine.close()
    assert ours.token_ids == ref.token_ids == chain[1:-1]  # "3", "</", "answer", ">"; " more" cut
    assert ours.finish_reason == ref.finish_reason == "stop"
    assert ours.stop_text == ref.stop_text == "</answer>"
    assert max(abs(a - b) for a, b in zip(ours.logprobs, ref.logprobs, strict=True)) < 1e-4
