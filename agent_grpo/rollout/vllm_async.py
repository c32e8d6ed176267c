"""vLLM decoding continuously: requests join the running batch at any step (`rollout.schedule: trajectory`).

`VLLMStepEngine` drives the very `vllm.LLM` of a `VLLMEngine` (same weights, same weight sync, same
caches) through vLLM's own step loop: `LLM.enqueue` adds a request, `LLMEngine.step` runs one scheduler
step (vLLM's scheduler admits new requests at every step: continuous batching) and returns the
requests that finished in it. That is what `LLM.generate` does internally for one batch; here the
rollout scheduler adds a trajectory's next turn as soon as its tools are done.

Why the step loop and not `AsyncLLM`: the `VLLMEngine` runs the engine core in the trainer's process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`) so weights reach it without a copy through another process;
`AsyncLLM` needs an asyncio loop and its own output-handler task around the same core, and gives no
more overlap: in both, the next request joins the batch at the next engine step. The step loop keeps the
rollout on one thread, with tools running on others.

Every request is built exactly as `VLLMEngine.generate` builds it (raw logprobs, logits scaled by
1/temperature in the model, stop tokens and strings, vision placeholders suppressed, per-request seed
from (params.seed, trajectory id, turn)) and its output is cut by the same `VLLMEngine._finish`, so a
turn gets the same tokens in either schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent_grpo.rollout.engine import GenRequest, GenResult, SamplingParams
from agent_grpo.rollout.vllm_engine import VLLMEngine, collapse_image_pads, request_seed

ExtraArgs = Callable[[GenRequest], dict[str, Any] | None]


class VLLMStepEngine:
    """`scheduler.StepEngine` (and a batch `Engine`) on a `VLLMEngine`'s `vllm.LLM`.

    `extra_args(request)` may attach vLLM `SamplingParams.extra_args` per request (read by custom vLLM
    logits processors; the benchmark uses it to script what a random model writes).
    """

    def __init__(self, engine: VLLMEngine, extra_args: ExtraArgs | None = None):
        self.engine = engine
        self.extra_args = extra_args
        self._live: dict[str, tuple[str, int, str]] = {}  # vLLM request id -> (handle, token limit, internal id)
        self._ready: list[tuple[str, GenResult]] = []  # answered without the engine (no room left)

    @classmethod
    def of(cls, engine: VLLMEngine) -> VLLMStepEngine:
        """The step engine of `engine` (one per engine: it tracks the requests in flight)."""
        found = getattr(engine, "_step_engine", None)
        if found is None:
            found = cls(engine)
            engine._step_engine = found
        return found

    # ---- Engine ------------------------------------------------------------------------------

    def generate(self, requests: list[GenRequest], params: SamplingParams) -> list[GenResult]:
        """One batch to the end, through the step loop (what `LLM.generate` does); results in request order."""
        handles = [f"batch-{i}" for i in range(len(requests))]
        for handle, r in zip(handles, requests, strict=True):
            self.submit(handle, r, params)
        done: dict[str, GenResult] = {}
        while len(done) < len(handles):
            done.update(self.step())
        return [done[h] for h in handles]

    def update_weights(self, state_dict: dict) -> None:
        self.engine.update_weights(state_dict)

    def sync_weights(self, model) -> None:
        self.engine.sync_weights(model)

    # ---- StepEngine --------------------------------------------------------------------------

    def submit(self, handle: str, request: GenRequest, params: SamplingParams) -> None:
        from vllm import SamplingParams as VSamplingParams

        e = self.engine
        e._set_logit_scale(params.temperature)  # one temperature per run: a change resets the scale for all
        limit = min(params.max_new_tokens, request.max_new_tokens or params.max_new_tokens)
        room = e.max_model_len - len(request.token_ids)
        if room < 1:  # no room for one token: the driver ends the trajectory as truncated
            self._ready.append((handle, GenResult(token_ids=[], logprobs=[], finish_reason="length")))
            return
        limit = min(limit, room)
        prompt: dict[str, Any] = {"prompt_token_ids": list(request.token_ids)}
        if request.images:
            prompt = {"prompt_token_ids": collapse_image_pads(request.token_ids, e.image_token_id),
                      "multi_modal_data": {"image": list(request.images)}}
        vparams = VSamplingParams(
            n=1,
            temperature=0.0 if params.greedy else 1.0,  # logits already divided by the temperature in the model
            top_p=1.0 if params.greedy else params.top_p,
            top_k=0 if params.greedy else params.top_k,
            seed=request_seed(params.seed, request.key, request.turn),
            max_tokens=limit,
            stop_token_ids=list(e.stop_token_ids),
            stop=list(e.stop_texts) or None,
            include_stop_str_in_output=True,
            ignore_eos=True,
            logprobs=0,
            logit_bias={t: -100.0 for t in e.suppress} or None,
            skip_special_tokens=False,
            detokenize=bool(e.stop_texts),
            extra_args=self.extra_args(request) if self.extra_args else None,
        )
        (internal,) = e.llm.enqueue([prompt], [vparams], use_tqdm=False)
        # `enqueue` returns the engine's internal id (the request id plus a random suffix); outputs carry the other.
        self._live[internal.rsplit("-", 1)[0]] = (handle, limit, internal)

    def step(self) -> list[tuple[str, GenResult]]:
        out, self._ready = self._ready, []
        if not self._live:
            return out
        if not self.engine.llm.llm_engine.has_unfinished_requests():
            raise RuntimeError(f"vLLM holds none of the {len(self._live)} requests in flight (were they aborted "
                               "elsewhere, or the engine reset?); the rollout cannot finish them")
        for output in self.engine.llm.llm_engine.step():
            if not output.finished or output.request_id not in self._live:
                continue
            handle, limit, _ = self._live.pop(output.request_id)
            out.append((handle, self.engine._finish(output.outputs[0], limit)))
        return out

    def abort(self, handles: list[str]) -> None:
        drop = set(handles)
        ids = [rid for rid, (h, _, _) in self._live.items() if h in drop]
        if ids:
            self.engine.llm.llm_engine.abort_request([self._live[rid][2] for rid in ids], internal=True)
        for rid in ids:
            del self._live[rid]
        self._ready = [r for r in self._ready if r[0] not in drop]

    @property
    def in_flight(self) -> int:
        return len(self._live) + len(self._ready)


_SCRIPTED = None


def scripted_tokens_processor():
    """A vLLM logits processor class that makes a request write given token ids (for tests and benchmarks).

    The vLLM counterpart of `HFEngine(logits_processors=...)`: a request whose `extra_args` hold
    `scripted_ids` can only sample those, in order (then the last one); the recorded logprobs stay the
    model's raw ones. Give it to `vllm.LLM(logits_processors=[...])` and attach the ids per request with
    `VLLMStepEngine(extra_args=...)`.
    """
    global _SCRIPTED
    if _SCRIPTED is None:
        import torch
        from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

        class ScriptedTokens(AdapterLogitsProcessor):
            def is_argmax_invariant(self) -> bool:
                return False

            def new_req_logits_processor(self, params):
                ids = (params.extra_args or {}).get("scripted_ids")
                if not ids:
                    return None

                def force(output_ids, logits):
                    n = len(output_ids)
                    out = torch.full_like(logits, float("-inf"))
                    out[ids[n] if n < len(ids) else ids[-1]] = 0.0
                    return out

                return force

        _SCRIPTED = ScriptedTokens
    return _SCRIPTED
