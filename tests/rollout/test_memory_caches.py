"""Byte limits of the rollout's image caches, set by config and reported in metrics (issue 19)."""

from __future__ import annotations

import inspect

from PIL import Image

from agent_grpo import pixels
from agent_grpo.rollout import HFEngine
from agent_grpo.rollout.vision import VisionCache
from agent_grpo.train.config import MemoryConfig, TrainConfig


def test_engine_image_cache_stays_under_its_limit_and_reports_it(tiny):
    model, _, chat = tiny
    one = chat.image_inputs([Image.new("RGB", (112, 112))])["pixel_values"].nbytes
    engine = HFEngine(model, chat, image_cache_mb=2.5 * one / 2**20)  # room for two images' patches
    for c in range(6):
        engine._image_inputs([Image.new("RGB", (112, 112), (c * 40, 0, 0))])
    m = engine.cache_metrics()
    assert m["memory/engine_image_cache_entries"] == 2 and m["memory/engine_image_cache_misses"] == 6
    assert m["memory/engine_image_cache_mb"] * 2**20 <= 2.5 * one
    engine._image_inputs([Image.new("RGB", (112, 112), (200, 0, 0))])  # the most recent: a hit
    assert engine.cache_metrics()["memory/engine_image_cache_hits"] == 1


def test_views_are_shared_across_caches_and_bounded(tiny, zoom_env):
    _, _, chat = tiny
    pixels.VIEWS.clear()
    part = zoom_env.load_tasks(n=1)[0].images[0]
    first = VisionCache(chat, zoom_env.budget).view(part)
    assert VisionCache(chat, zoom_env.budget).view(part) is first  # a later step: not resized again
    old = pixels.VIEWS.max_bytes
    try:
        pixels.configure(views_mb=0)
        assert len(pixels.VIEWS) == 0 and VisionCache(chat, zoom_env.budget).view(part) is not first
    finally:
        pixels.VIEWS.resize(old)


def test_memory_limits_are_config_fields():
    cfg = TrainConfig.model_validate({"memory": {"engine_image_cache_mb": 8, "decoded_images_mb": 32}})
    assert cfg.memory == MemoryConfig(engine_image_cache_mb=8, decoded_images_mb=32)
    assert MemoryConfig().model_views_mb > 0


def test_evaluation_engine_cache_is_bounded_by_the_memory_config(tiny, zoom_env, monkeypatch):
    """The demo's final evaluation ran its HF engine with a 512 MB preprocessed-image cache (the engine's own
    default, not `memory.engine_image_cache_mb`): on top of the GRPO stage's full caches, that was the run's
    2.02 GiB peak. Evaluations now take the configured limit, and the engine's default equals the config's."""
    import agent_grpo.evaluate as evaluate

    model, _, chat = tiny
    engines = []

    class Recording(HFEngine):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            engines.append(self)

    monkeypatch.setattr("agent_grpo.rollout.HFEngine", Recording)  # evaluate_policy imports it when called
    view = VisionCache(chat, zoom_env.budget).view(zoom_env.load_tasks(n=1)[0].images[0])  # what the engine sees
    one = chat.image_inputs([view])["pixel_values"].nbytes
    evaluate.evaluate_policy(model, chat, zoom_env, n=3, max_new_tokens=4, image_cache_mb=1.5 * one / 2**20)
    m = engines[-1].cache_metrics()
    assert m["memory/engine_image_cache_misses"] >= 2  # three different task images went through it
    assert m["memory/engine_image_cache_entries"] == 1 and m["memory/engine_image_cache_mb"] * 2**20 <= 1.5 * one

    evaluate.evaluate_policy(model, chat, zoom_env, n=1, max_new_tokens=4)
    assert engines[-1]._image_inputs.max_bytes == MemoryConfig().engine_image_cache_mb * 2**20
    default = inspect.signature(HFEngine).parameters["image_cache_mb"].default
    assert default == MemoryConfig().engine_image_cache_mb
