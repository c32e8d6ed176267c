"""The wire format between `ServerEngine` (the trainer) and `agent-grpo serve-engine` (the generation server).

JSON over HTTP, typed by the pydantic models below on both sides. What makes it exact:
- token ids go as JSON integers and logprobs as JSON floats (Python writes the shortest repr that
  reads back to the same float, so a logprob crosses bit for bit);
- each image goes once per call as lossless PNG (base64) with the sha256 of its pixels
  (`images.image_sha256`: mode, size, raw bytes); the server decodes it and refuses it if the hash
  differs, so the server sees exactly the pixels the trainer will train on. Requests point into that
  list, so a group's shared prompt image crosses once;
- sampling parameters are our `SamplingParams`, seeds included: the server runs the same
  `VLLMEngine.generate` as the colocated engine, per-request seeds derived from (seed, key, turn).

Weights carry a version: every push gets a new one, every generate call names the version it
expects, and a server holding another one answers 409 (a restarted server holds none), so a trajectory
is never sampled with weights the trainer did not push.
"""

from __future__ import annotations

import base64
import io

from PIL import Image
from pydantic import BaseModel, Field

from agent_grpo.images import image_sha256
from agent_grpo.rollout.engine import GenResult, SamplingParams

PROTOCOL = 1
STALE_WEIGHTS = 409  # HTTP status: the server does not hold the weights version the call expects


class WireImage(BaseModel):
    png_b64: str
    sha256: str = Field(description="images.image_sha256 of the pixels, checked after decoding")


class WireRequest(BaseModel):
    token_ids: list[int]
    images: list[int] = Field(default_factory=list, description="indices into GenerateCall.images, placeholder order")
    max_new_tokens: int | None = None
    key: str | None = None
    turn: int = 0


class GenerateCall(BaseModel):
    weights_version: str | None = Field(description="the version the trainer last pushed; None: any")
    params: SamplingParams
    images: list[WireImage] = Field(default_factory=list)
    requests: list[WireRequest]


class GenerateReply(BaseModel):
    weights_version: str | None
    results: list[GenResult]
    seconds: float = 0.0


class SyncCall(BaseModel):
    """Load the weights in a safetensors file (full weights in Hugging Face naming, LoRA merged)."""

    path: str
    version: str


class SyncReply(BaseModel):
    weights_version: str
    seconds: float


class NCCLCall(BaseModel):
    """One control call of vLLM's NCCL weight transfer, relayed to the server's workers (GPUs only).

    `info`: vLLM's init or update payload, as its trainer engine builds it; `version`: on finish."""

    info: dict = Field(default_factory=dict)
    version: str | None = None


class ServerInfo(BaseModel):
    """What the trainer checks before it trusts the server (same tokenizer, stops, limits)."""

    protocol: int = PROTOCOL
    model: str
    vocab_size: int
    image_token_id: int
    stop_strings: list[str]
    max_model_len: int
    max_images: int
    weights_version: str | None


class ErrorReply(BaseModel):
    detail: str


def encode_image(image: Image.Image) -> WireImage:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # lossless at any level; 1 is the fastest
    return WireImage(png_b64=base64.b64encode(buf.getvalue()).decode("ascii"), sha256=image_sha256(image))


def decode_image(wire: WireImage) -> Image.Image:
    """The PNG's pixels, or ValueError if they are not the ones the trainer hashed."""
    image = Image.open(io.BytesIO(base64.b64decode(wire.png_b64, validate=True)))
    image.load()
    if image_sha256(image) != wire.sha256:
        raise ValueError(f"image {wire.sha256[:12]}: decoded pixels differ from the sent ones (mode {image.mode})")
    return image
