"""The engine interface: token ids + images in, sampled token ids + logprobs out.

The rollout driver only talks to an `Engine`; the Hugging Face backend (`hf_engine.py`) and a vLLM
backend implement the same two methods, so a new backend never touches the driver.

Logprob convention (both backends): the log-probability of each sampled token under
`softmax(logits / temperature)` of the unmodified model logits (no top-k/top-p renormalisation),
which is exactly what the training forward computes, so the two can be compared token by token.
Tokens an engine never lets the model write (vision placeholders, `<|im_start|>`) are taken out of the
distribution it samples from but stay in that normaliser, on both sides: importance sampling cannot see
that gap (at most the mass those tokens hold; see `hf_engine.py`).
"""

from __future__ import annotations

from typing import Literal, Protocol

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field


class SamplingParams(BaseModel):
    model_config = ConfigDict(frozen=True)

    temperature: float = Field(default=1.0, gt=0.0, description="must be > 0; use a small value for near-greedy")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, description="0 disables top-k")
    max_new_tokens: int = Field(default=128, ge=1, description="per turn")
    greedy: bool = False
    seed: int = 0


class GenRequest(BaseModel):
    """One sequence to continue: the full context so far and its images in placeholder order."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    token_ids: list[int]
    images: list[Image.Image] = Field(default_factory=list, description="model views, already resized")
    max_new_tokens: int | None = Field(default=None, description="caps SamplingParams.max_new_tokens")
    key: str | None = Field(default=None, description="trajectory id, for scripted engines and logs")
    turn: int = 0


class GenResult(BaseModel):
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: Literal["stop", "length"]
    stop_text: str | None = Field(default=None, description="the stop token or string that ended it")


class Engine(Protocol):
    """What the rollout driver needs from an inference backend."""

    def generate(self, requests: list[GenRequest], params: SamplingParams) -> list[GenResult]:
        """Continue every request; results in request order."""
        ...

    def update_weights(self, state_dict: dict) -> None:
        """Load new policy weights (after an optimizer step)."""
        ...
