"""Sampling is exactly `SamplingParams`: nothing of a checkpoint's `generation_config.json` leaks in."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import GenerationConfig

from agent_grpo.rollout import GenRequest, HFEngine, SamplingParams

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "qwen2_5_vl_7b_instruct"


@pytest.fixture(scope="module")
def penalised(tiny):
    """A copy of the tiny model that prefers one token everywhere (a bias on its lm_head), carrying the real
    Qwen2.5-VL-7B-Instruct generation config (repetition_penalty 1.05, do_sample, temperature 1e-6) with a
    stronger penalty (3.0) and a min-p of 0.99 (near-greedy sampling), so a leak changes what is drawn."""
    model, _, chat = tiny
    model = copy.deepcopy(model)
    favourite = chat.tokenizer.encode(" one", add_special_tokens=False)[0]
    head = model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        biased.bias[favourite] = 6.0
    model.lm_head = biased
    shipped = GenerationConfig.from_pretrained(FIXTURE)
    assert shipped.repetition_penalty == 1.05
    shipped.repetition_penalty, shipped.min_p = 3.0, 0.99
    model.generation_config = shipped
    return model, chat, favourite


def _raw_logits(model, chat, prompt, new):
    ids = torch.tensor([prompt + new])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                       mm_token_type_ids=torch.zeros_like(ids), use_cache=False).logits[0].float()
    return logits[len(prompt) - 1 : -1]  # [N, V]: the logits each new token was chosen from


def _prompt(chat):
    # Repeated words: a repetition penalty would push the greedy choice away from them.
    return chat.encode(chat.render_text([{"role": "user", "content": "one one one two two two three three"}],
                                        add_generation_prompt=True))


def test_greedy_takes_the_argmax_of_the_raw_logits_whatever_the_checkpoint_says(penalised):
    model, chat, favourite = penalised
    engine = HFEngine(model, chat, stop_strings=("<|im_end|>",))
    prompt = _prompt(chat)
    [res] = engine.generate([GenRequest(token_ids=prompt)], SamplingParams(greedy=True, max_new_tokens=24))
    logits = _raw_logits(model, chat, prompt, res.token_ids)
    logits[:, engine.suppress] = float("-inf")  # vision placeholders and <|im_start|> are never sampled
    assert len(res.token_ids) >= 8
    assert res.token_ids == logits.argmax(-1).tolist() == [favourite] * len(res.token_ids)  # penalised: not so
    assert model.generation_config.repetition_penalty == 3.0  # the checkpoint's config is left as it was


def test_sampling_draws_from_the_raw_distribution(penalised):
    """At temperature 1 every sampled token is allowed by the raw distribution, and the top-k / min-p of the
    checkpoint's min-p (0.99) is not applied: many non-argmax tokens are drawn; logprobs are the raw ones."""
    model, chat, favourite = penalised
    with torch.no_grad():
        model.lm_head.bias.zero_()  # a flat enough distribution
    engine = HFEngine(model, chat, stop_strings=("<|im_end|>",))
    prompt = _prompt(chat)
    params = SamplingParams(temperature=1.0, max_new_tokens=32, seed=1)
    results = engine.generate([GenRequest(token_ids=prompt) for _ in range(4)], params)
    not_argmax = 0
    for res in results:
        logits = _raw_logits(model, chat, prompt, res.token_ids)
        lp = torch.log_softmax(logits, -1)
        chosen = torch.tensor(res.token_ids)
        assert torch.allclose(lp.gather(-1, chosen[:, None]).squeeze(-1), torch.tensor(res.logprobs), atol=1e-4)
        not_argmax += int((chosen != logits.argmax(-1)).sum())
    assert not_argmax > 64  # of 128 (measured 125); with the checkpoint's min-p 10 (the raw argmax is penalised)


def test_a_lora_wrapped_policy_ignores_the_checkpoint_config_too(penalised):
    from peft import LoraConfig, get_peft_model

    model, chat, favourite = penalised
    wrapped = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj"]))
    with torch.no_grad():
        wrapped.get_base_model().lm_head.bias[favourite] = 6.0
    engine = HFEngine(wrapped, chat, stop_strings=("<|im_end|>",))
    prompt = _prompt(chat)
    [res] = engine.generate([GenRequest(token_ids=prompt)], SamplingParams(greedy=True, max_new_tokens=8))
    assert res.token_ids == [favourite] * 8  # the penalty (3.0) would forbid repeating it
    assert wrapped.get_base_model().generation_config.repetition_penalty == 3.0
