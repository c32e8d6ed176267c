"""A scripted engine: a policy written as a Python function, for tests and demos.

`script(request) -> str` gives the text of the next turn (it sees the trajectory id and turn in the
request). The text is tokenised once, here, and cut at the earliest stop token or stop string exactly
like a model's output (`stops.py`), so the driver, the environment and the batch assembly run the same
code as with a real model. Logprobs are 0: a scripted policy picks its text with probability 1.
"""

from __future__ import annotations

from collections.abc import Callable

from agent_grpo.rollout.engine import GenRequest, GenResult, SamplingParams
from agent_grpo.rollout.stops import cut_at_stops, earliest_stop_string


class ScriptedEngine:
    def __init__(self, script: Callable[[GenRequest], str], chat):
        self.script = script
        self.chat = chat
        vocab = chat.tokenizer.get_vocab()
        self.stop_ids = {vocab[s]: s for s in chat.stop_strings if s in vocab}
        self.stop_texts = tuple(s for s in chat.stop_strings if s not in vocab)

    def update_weights(self, state_dict: dict) -> None:
        """Nothing to update: the policy is code."""

    def generate(self, requests: list[GenRequest], params: SamplingParams) -> list[GenResult]:
        results = []
        for r in requests:
            ids = self.chat.tokenizer.encode(self.script(r), add_special_tokens=False)
            limit = min(params.max_new_tokens, r.max_new_tokens or params.max_new_tokens)
            ids, stopped = cut_at_stops(ids[:limit], self.stop_ids, self.stop_texts, self.chat.decode)
            if stopped:
                found = None if ids[-1] in self.stop_ids else earliest_stop_string(self.chat.decode(ids), self.stop_texts)
                stop = found[1] if found else self.stop_ids[ids[-1]]
                results.append(GenResult(token_ids=ids, logprobs=[0.0] * len(ids), finish_reason="stop", stop_text=stop))
            else:
                results.append(GenResult(token_ids=ids, logprobs=[0.0] * len(ids), finish_reason="length"))
        return results
