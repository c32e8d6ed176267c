"""Hugging Face `generate` backend (CPU and GPU).

Requests are left-padded into one batch with all their images; generation stops on the stop tokens
(`</tool_call>`, `</answer>`, end of turn), and every row is cut at its earliest stop token or stop
string (`stops.py`; with the real Qwen tokenizer `</answer>` is three tokens). Sampling is exactly
`SamplingParams` (the checkpoint's `generation_config.json` is ignored, see `generation_config`).
Sampling logprobs come from the raw logits (`output_logits=True`), see `engine.py`.

Image features are cached by pixel hash (`_ImageInputCache`): a trajectory sends all its images again
every turn and a group's trajectories share their prompt images, so each distinct image is
preprocessed once (bench/rollout_overhead.py measured this at ~5% of a tiny-model rollout).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from PIL import Image
from transformers import GenerationConfig

from agent_grpo.images import image_sha256
from agent_grpo.models.mrope import mm_token_type_ids
from agent_grpo.rollout.engine import GenRequest, GenResult, SamplingParams
from agent_grpo.rollout.stops import cut_at_stops, earliest_stop_string

SUPPRESSED = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|im_start|>")


class _ImageInputCache:
    """`chat.image_inputs` with each distinct image preprocessed once; least recently used out first.

    Keyed by the pixels' hash (mode, size, bytes), so an image changed in place never gets stale
    features. Relies on the Qwen-VL processors' layout: `pixel_values` is the images' patch rows
    concatenated in order (`t*h*w` rows each, from `image_grid_thw`), each image processed on its own,
    so cached rows concatenate to exactly what one call on all the images returns.
    """

    def __init__(self, image_inputs: Callable[[Sequence[Image.Image]], dict], max_bytes: int):
        self.image_inputs = image_inputs
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()  # [p, D], [3]
        self._bytes = 0
        self.hits = self.misses = 0

    def __call__(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        if self.max_bytes <= 0:
            return self.image_inputs(images)
        keys = [image_sha256(img) for img in images]
        missing = {k: img for k, img in zip(keys, images, strict=True) if k not in self._entries}
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        fresh: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if missing:
            out = self.image_inputs(list(missing.values()))
            grids = out["image_grid_thw"]  # [n, 3]
            rows = out["pixel_values"].split(grids.prod(dim=-1).tolist())
            # Clones, so an evicted entry frees its memory instead of pinning the whole batch tensor.
            fresh = {k: (pv.clone(), g.clone()) for k, pv, g in zip(missing, rows, grids, strict=True)}
        parts = []
        for k in keys:
            if k in fresh:
                parts.append(fresh[k])
            else:
                self._entries.move_to_end(k)
                parts.append(self._entries[k])
        for k, entry in fresh.items():
            self._entries[k] = entry
            self._bytes += entry[0].nbytes
        while self._bytes > self.max_bytes and self._entries:
            _, (pv, _) = self._entries.popitem(last=False)
            self._bytes -= pv.nbytes
        return {"pixel_values": torch.cat([p for p, _ in parts]), "image_grid_thw": torch.stack([g for _, g in parts])}

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def metrics(self) -> dict[str, float]:
        return {"memory/engine_image_cache_mb": self._bytes / 2**20, "memory/engine_image_cache_entries": float(len(self._entries)),
                "memory/engine_image_cache_hits": float(self.hits), "memory/engine_image_cache_misses": float(self.misses)}


class HFEngine:
    def __init__(
        self, model, chat, stop_strings: tuple[str, ...] | None = None, logits_processors=None,
        image_cache_mb: float = 64,
    ):
        """`model`: a Qwen-VL `...ForConditionalGeneration`; `chat`: the `ChatFormat` of its processor.

        `logits_processors(requests, prompt_width) -> list` may add HF logits processors per call (tests use
        it to force a scripted continuation through the real model; logprobs still come from raw logits).
        `image_cache_mb`: memory for preprocessed images kept between calls (0 turns the cache off).
        """
        self.model = model
        self.logits_processors = logits_processors
        self.chat = chat
        self.tokenizer = chat.tokenizer
        stops = stop_strings or tuple(chat.stop_strings)
        vocab = self.tokenizer.get_vocab()
        # Stops that are single tokens go to generate as eos ids; others are found in decoded text.
        self.stop_token_ids = {vocab[s]: s for s in stops if s in vocab}
        self.stop_texts = tuple(s for s in stops if s not in vocab)
        self.pad_id = chat.pad_token_id
        self.image_token_id = chat.image_token_id
        self._image_inputs = _ImageInputCache(chat.image_inputs, int(image_cache_mb * 2**20))
        # The model must never write vision placeholders itself: an `<|image_pad|>` it samples would
        # claim an image that does not exist, so generate sets their logits to -inf. The recorded
        # logprobs stay those of the raw logits over the whole vocabulary (engine.py's convention,
        # which is what the training forward computes), so sampling draws from p / (1 - s) where s is
        # the mass these tokens hold while both sides record p: importance sampling sees ratio 1 and
        # does NOT correct for it. The gap is log(1 - s) per token: about 0 for a trained checkpoint,
        # which never writes these tokens in assistant text, but not for a random tiny model (one of
        # them can be its argmax). Masking them in the training forward as well would close it.
        self.suppress = [vocab[t] for t in SUPPRESSED if t in vocab]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def update_weights(self, state_dict: dict) -> None:
        self.model.load_state_dict(state_dict, strict=False)

    def cache_metrics(self) -> dict[str, float]:
        """Bytes and entries of the preprocessed-image cache, for the step's metrics."""
        return self._image_inputs.metrics()

    def clear_image_cache(self) -> None:
        """Forget preprocessed images (they never go stale: the cache is keyed by pixels)."""
        self._image_inputs.clear()

    def generation_config(self, params: SamplingParams, max_new_tokens: int) -> GenerationConfig:
        """Exactly `params`, and nothing from the checkpoint's `generation_config.json`.

        Checkpoints ship sampling defaults (Qwen2.5-VL-7B-Instruct: `repetition_penalty: 1.05`, a tiny
        temperature); `generate` fills every field left unset from them. Every field that shapes the
        distribution is set here, and `generate` runs with the model's own config blanked
        (`without_checkpoint_defaults`).
        """
        sample = not params.greedy
        return GenerationConfig(
            do_sample=sample,
            temperature=params.temperature if sample else None,
            top_p=params.top_p if sample else None,
            top_k=params.top_k if sample else None,  # 0: off
            repetition_penalty=1.0,
            num_beams=1,
            max_new_tokens=max_new_tokens,
            eos_token_id=list(self.stop_token_ids) or None,
            pad_token_id=self.pad_id,
            suppress_tokens=self.suppress or None,
            return_dict_in_generate=True,
            output_logits=True,
        )

    @contextlib.contextmanager
    def without_checkpoint_defaults(self):
        """`generate` with a blank model generation config, restored afterwards (checkpoints save it)."""
        # Under PEFT's wrapper `generate` reads the wrapped transformers model's config.
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        saved = model.generation_config
        model.generation_config = GenerationConfig()
        try:
            yield
        finally:
            model.generation_config = saved

    @torch.no_grad()
    def generate(self, requests: list[GenRequest], params: SamplingParams) -> list[GenResult]:
        if not requests:
            return []
        max_new = max(min(params.max_new_tokens, r.max_new_tokens or params.max_new_tokens) for r in requests)
        width = max(len(r.token_ids) for r in requests)
        ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, width - len(r.token_ids) :] = torch.tensor(r.token_ids, dtype=torch.long)
            mask[i, width - len(r.token_ids) :] = 1
        images = [img for r in requests for img in r.images]
        inputs = {"input_ids": ids, "attention_mask": mask}
        inputs["mm_token_type_ids"] = mm_token_type_ids(ids, self.image_token_id)
        if images:
            inputs.update(self._image_inputs(images))
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)

        torch.manual_seed(params.seed)
        with self.without_checkpoint_defaults():
            out = self.model.generate(
                **inputs,
                generation_config=self.generation_config(params, max_new),
                logits_processor=self.logits_processors(requests, width) if self.logits_processors else None,
            )
        new_tokens = out.sequences[:, width:]  # [B, N]
        # One step at a time: a [B, N, V] stack of all steps would be gigabytes with a real vocabulary.
        token_lp = torch.stack(
            [
                torch.log_softmax(step.float() / params.temperature, dim=-1).gather(-1, new_tokens[:, i : i + 1])
                for i, step in enumerate(out.logits)  # step: [B, V]
            ],
            dim=1,
        ).squeeze(-1).cpu()  # [B, N]
        new_tokens = new_tokens.cpu()
        return [
            self._finish(new_tokens[i].tolist(), token_lp[i].tolist(), r.max_new_tokens or params.max_new_tokens, params)
            for i, r in enumerate(requests)
        ]

    def _finish(self, tokens: list[int], lps: list[float], limit: int, params: SamplingParams) -> GenResult:
        """Cut one row at its earliest stop (kept) or at its own token limit."""
        limit = min(limit, params.max_new_tokens)
        kept, stopped = cut_at_stops(tokens[:limit], self.stop_token_ids, self.stop_texts, self._decode)
        if not stopped:
            return GenResult(token_ids=kept, logprobs=lps[: len(kept)], finish_reason="length")
        return GenResult(token_ids=kept, logprobs=lps[: len(kept)], finish_reason="stop", stop_text=self._stop_of(kept))

    def _stop_of(self, kept: list[int]) -> str:
        """Which stop ended a cut row: its last token, or else the stop string its text contains first."""
        if kept[-1] in self.stop_token_ids:
            return self.stop_token_ids[kept[-1]]
        found = earliest_stop_string(self._decode(kept), self.stop_texts)  # cut_at_stops cut right there
        return found[1] if found else ""

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)
