"""Cutting turns at their earliest stop with the real Qwen2.5-VL tokenizer, where `</answer>` is three tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
from zoom_fixtures import TWO_ZOOMS

from agent_grpo.models.chat import ChatFormat
from agent_grpo.models.loading import load_processor
from agent_grpo.rollout import (
    HFEngine,
    RolloutConfig,
    RolloutDriver,
    SamplingParams,
    ScriptedEngine,
    cut_at_stops,
)
from agent_grpo.rollout.stops import text_before_stop
from agent_grpo.trajectory import Termination

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "qwen2_5_vl_7b_instruct"
TRAILING = "<think>a</think><answer>3</answer> The answer is 3.<|im_end|>"


@pytest.fixture(scope="module")
def qwen_chat():
    return ChatFormat(load_processor(FIXTURE))


@pytest.fixture(scope="module")
def engine(qwen_chat):
    return HFEngine(None, qwen_chat)  # only the stop lists and the tokenizer are used here


def _cut(engine, text):
    ids = engine.tokenizer.encode(text, add_special_tokens=False)
    return ids, cut_at_stops(ids, engine.stop_token_ids, engine.stop_texts, engine.chat.decode)


def test_answer_is_three_tokens_and_a_later_end_of_turn_does_not_hide_it(qwen_chat, engine):
    assert "</answer>" in engine.stop_texts  # not a token: found in decoded text only
    ids, (kept, stopped) = _cut(engine, TRAILING)
    assert stopped and ids[-1] in engine.stop_token_ids  # the row also has a (later) stop token
    assert qwen_chat.decode(kept) == "<think>a</think><answer>3</answer>"
    # The engine's own cut gives the same tokens, their logprobs and the stop that ended the turn.
    res = engine._finish(ids, [float(-i) for i in range(len(ids))], limit=64, params=SamplingParams())
    assert res.token_ids == kept and res.logprobs == [float(-i) for i in range(len(kept))]
    assert (res.finish_reason, res.stop_text) == ("stop", "</answer>")


@pytest.mark.parametrize("text, kept_text, stop", [
    ("x</tool_call>y</answer>z", "x</tool_call>", "</tool_call>"),  # a stop token before a stop string
    ("x</answer> y</tool_call>z", "x</answer>", "</answer>"),  # a stop string before a stop token
    ("<answer>3</answer><|im_end|>", "<answer>3</answer>", "</answer>"),  # the string completes first
    ("just text<|im_end|>more", "just text<|im_end|>", "<|im_end|>"),
    ("no stop here at all", "no stop here at all", None),
])
def test_cut_at_the_earliest_stop_of_either_kind(qwen_chat, engine, text, kept_text, stop):
    ids, (kept, stopped) = _cut(engine, text)
    assert qwen_chat.decode(kept) == kept_text
    assert stopped == (stop is not None)
    res = engine._finish(ids, [0.0] * len(ids), limit=64, params=SamplingParams())
    assert res.stop_text == stop and res.finish_reason == ("stop" if stop else "length")


def test_a_stop_completed_inside_a_merged_token_keeps_that_token_and_nothing_after(qwen_chat, engine):
    ids, (kept, stopped) = _cut(engine, "<answer>3</answer>.\n\nThe answer is 3.")
    assert stopped and kept == ids[: len(kept)]
    assert qwen_chat.tokenizer.decode(kept[-1:]) == ">.\n\n"  # `</answer>` ends inside this sampled token
    assert qwen_chat.decode(kept) == "<answer>3</answer>.\n\n"
    assert text_before_stop(qwen_chat.decode(kept), "</answer>") == "<answer>3</answer>"


def test_the_cut_costs_a_logarithmic_number_of_decodes(qwen_chat):
    ids = qwen_chat.tokenizer.encode("word " * 1000 + "</answer> tail", add_special_tokens=False)
    calls = []

    def decode(prefix):
        calls.append(len(prefix))
        return qwen_chat.decode(prefix)

    kept, stopped = cut_at_stops(ids, set(), ["</answer>"], decode)
    assert stopped and qwen_chat.decode(kept).endswith("</answer>")
    assert len(calls) <= 13  # 1 + log2(1000)


def test_empty_stop_string_is_an_error():
    with pytest.raises(ValueError, match="non-empty"):
        cut_at_stops([1, 2], set(), ["", "</answer>"], lambda ids: "x")


def test_scripted_engine_cuts_at_multi_token_stop_strings(qwen_chat, zoom_env):
    """The scripted policy writes past `</answer>`: the turn, its tokens and the answer end at the stop."""
    answer = "<think>it is</think><answer>3</answer>.\n\nThe answer is 3, I am sure."
    engine = ScriptedEngine(lambda r: [TWO_ZOOMS[0], answer][r.turn], qwen_chat)
    config = RolloutConfig(group_size=1, max_total_tokens=2048, sampling=SamplingParams(max_new_tokens=64))
    [traj] = RolloutDriver(zoom_env, engine, qwen_chat, config).rollout(zoom_env.load_tasks(n=1))
    assert traj.termination == Termination.ANSWERED and traj.answer == "3"
    assert traj.turns[-1].text == "<think>it is</think><answer>3</answer>"
    last = [s for s in traj.segments if s.kind == "sampled"][-1]
    assert qwen_chat.decode(last.token_ids) == "<think>it is</think><answer>3</answer>.\n\n"  # nothing after the token

