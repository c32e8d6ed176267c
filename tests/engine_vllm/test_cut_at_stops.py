"""`cut_at_stops`, which both engines use to end a turn (runs without vLLM)."""

from __future__ import annotations

from agent_grpo.rollout.stops import cut_at_stops

VOCAB = {1: "<", 2: "/ans", 3: "wer>", 4: "a", 9: "<|im_end|>"}


def decode(ids):
    return "".join(VOCAB[i] for i in ids)


def test_multi_token_stop_string_ends_at_the_token_completing_it():
    assert cut_at_stops([4, 1, 2, 3, 4, 9], {9}, ["</answer>"], decode) == ([4, 1, 2, 3], True)


def test_the_earliest_stop_wins_whichever_kind():
    assert cut_at_stops([4, 9, 1, 2, 3], {9}, ["</answer>"], decode) == ([4, 9], True)


def test_no_stop_keeps_everything():
    assert cut_at_stops([4, 1, 2, 4], {9}, ["</answer>"], decode) == ([4, 1, 2, 4], False)
    assert cut_at_stops([], {9}, ["</answer>"], decode) == ([], False)
