"""The server wire format is exact: pixels and logprobs cross unchanged, or are refused."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from agent_grpo.images import image_sha256
from agent_grpo.rollout.engine import GenResult
from agent_grpo.rollout.server_protocol import GenerateReply, decode_image, encode_image


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_images_cross_pixel_for_pixel(mode):
    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, size=(37, 53, channels), dtype=np.uint8).squeeze()
    image = Image.fromarray(pixels, mode=mode)
    back = decode_image(encode_image(image))
    assert back.mode == mode and np.array_equal(np.asarray(back), np.asarray(image))
    assert image_sha256(back) == image_sha256(image)


def test_an_image_not_matching_its_hash_is_refused():
    a = Image.new("RGB", (8, 8), (1, 2, 3))
    wire = encode_image(a).model_copy(update={"sha256": encode_image(Image.new("RGB", (8, 8), (1, 2, 4))).sha256})
    with pytest.raises(ValueError, match="decoded pixels differ"):
        decode_image(wire)


def test_logprobs_cross_bit_for_bit():
    lps = np.random.default_rng(1).normal(-3, 2, size=200).astype(np.float32).tolist()  # vLLM's float32 values
    reply = GenerateReply(weights_version="v", results=[GenResult(token_ids=list(range(200)), logprobs=lps,
                                                                  finish_reason="length")])
    back = GenerateReply.model_validate_json(reply.model_dump_json())
    assert back.results[0].logprobs == lps and back.results[0].token_ids == list(range(200))
