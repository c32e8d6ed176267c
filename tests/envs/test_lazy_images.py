"""Images decoded on access and held once (issue 19): lazy task rows, demonstrations without decoded pixels,
byte-bounded caches, and the very same pixels and tokens as when everything was kept decoded."""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from pathlib import Path

import pytest
from PIL import Image

from agent_grpo import pixels
from agent_grpo.content import ImagePart
from agent_grpo.envs.registry import make_env
from agent_grpo.images import image_sha256
from agent_grpo.models.chat import ChatFormat
from agent_grpo.models.loading import load_processor
from agent_grpo.rollout.batch import assemble_batch
from agent_grpo.store import RunMeta, RunStore, image_parts
from agent_grpo.train import sft_data
from agent_grpo.train.sft_data import SFTDataConfig, load_sft_data

PERCEPTION = Path(__file__).resolve().parents[2] / "envs" / "agent_grpo_envs" / "visual_search" / "perception"

# Recorded on the base commit 16bfec7, where every task and demonstration kept its pixels decoded:
# visual-search seed 0, the demo's data settings, 12 train + 4 held-out tasks, the shipped checkpoint's processor.
BEFORE = {"train_images": "e5ff9a2e6a355e1b", "test_images": "d7ea05f84445c150", "demo_tokens": "7b0572f8cbb04d38",
          "demo_images": "7a786fd57865ee91", "batch_ids": "4b712116631c3f02", "batch_pixels": "7cad138bd261030f"}


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()[:16]


@pytest.fixture
def no_caches():
    """Nothing decoded is kept: every access decodes (regenerates) again."""
    old = pixels.DECODED.max_bytes, pixels.VIEWS.max_bytes
    pixels.DECODED.clear(), pixels.VIEWS.clear()
    pixels.configure(decoded_mb=0, views_mb=0)
    yield
    pixels.DECODED.resize(old[0]), pixels.VIEWS.resize(old[1])


def pinned_bytes(trajs) -> int:
    return sum(pixels.image_nbytes(p._pil) for t in trajs for p in image_parts(t) if p._pil is not None)


@pytest.mark.slow
def assert_read_again_from_its_source(part) -> None:
    """A lazy part holds no pixels; once the decoded cache is empty it reads the very same ones again."""
    assert part.is_lazy
    pixels.DECODED.clear()
    assert image_sha256(part.pil) == part.sha256


def test_demo_pixels_and_tokens_are_those_recorded_before_laziness(no_caches, monkeypatch):
    monkeypatch.setattr(sft_data, "SCRIPTED_CHUNK_TASKS", 5, raising=False)  # several chunks: chunking changes nothing
    chat = ChatFormat(load_processor(PERCEPTION))
    env = make_env("visual-search", config={"tool_cost": 0.05})
    try:
        got = {"train_images": digest([image_sha256(t.images[0].pil) for t in env.load_tasks("train", n=12, seed=0)]),
               "test_images": digest([image_sha256(t.images[0].pil) for t in env.load_tasks("test", n=4, seed=0)])}
        cfg = SFTDataConfig(source="scripted", quality=0.5, max_total_tokens=1024, max_new_tokens=96)
        data = load_sft_data(cfg, env, chat, num_train_tasks=12, num_eval_tasks=4, seed=0)
        trajs = data.train + data.eval
        assert pinned_bytes(trajs) == 0  # every image is lazy: a task seed or PNG bytes
        got["demo_tokens"] = digest([[t.id, [(s.kind, s.token_ids) for s in t.segments]] for t in trajs])
        got["demo_images"] = digest([[image_sha256(p.pil) for p in t.images] for t in trajs])
        batch = assemble_batch(data.train[:8], chat, env.budget)
        got["batch_ids"] = hashlib.sha256(batch.input_ids.numpy().tobytes()).hexdigest()[:16]
        got["batch_pixels"] = hashlib.sha256(batch.pixel_values.numpy().tobytes()).hexdigest()[:16]
    finally:
        env.shutdown()
    assert got == BEFORE


def test_visual_search_task_rows_hold_no_pixels_and_redraw_the_same_ones():
    env = make_env("visual-search")
    task = env.load_tasks("train", n=3, seed=0)[2]
    part = task.images[0]
    assert part.is_lazy and part._pil is None
    first = part.pil
    pixels.DECODED.clear()
    again = part.pil  # drawn again from the task's seed
    assert again is not first and image_sha256(again) == part.sha256 == image_sha256(first)
    assert env.make_task("train", 2, 0).images[0].sha256 == part.sha256


def test_grounding_synthetic_and_file_rows_are_lazy(tmp_path):
    Image.new("RGB", (64, 48), (10, 200, 30)).save(tmp_path / "a.png")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"image": "a.png", "expression": "the green one", "bbox": [1, 2, 30, 40]}) + "\n")
    env = make_env("grounding", config={"data": {"test": str(rows)}})
    for task in (env.load_tasks("train", n=1)[0], env.load_tasks("test")[0]):
        assert_read_again_from_its_source(task.images[0])


def test_vstar_task_images_are_read_from_their_files_when_used():
    env = make_env("vstar")
    task = env.load_tasks("test", n=1)[0]
    assert_read_again_from_its_source(task.images[0])


def test_a_huge_synthetic_split_opens_in_constant_memory():
    env = make_env("visual-search")
    tracemalloc.start()
    small = env.load_tasks("train", n=1_000)
    big = env.load_tasks("train", n=10_000_000)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(big) == 10_000_000 and peak < 64 * 1024
    assert big[123].images[0].sha256 == small[123].images[0].sha256  # a split's tasks do not depend on its size


def test_a_loader_that_gives_other_pixels_is_refused():
    image = Image.new("RGB", (8, 8), (1, 2, 3))
    part = ImagePart.from_source(image, lambda: Image.new("RGB", (8, 8), (9, 9, 9)))
    pixels.DECODED.clear()
    with pytest.raises(ValueError, match="other pixels"):
        _ = part.pil


def test_released_tool_images_keep_png_bytes_and_every_holder_sees_it():
    image = Image.effect_noise((64, 64), 40).convert("RGB")
    part = ImagePart.from_pil(image, observation=1, source="tool")
    copy = part.with_provenance(parent=0)
    part.release_pixels()
    assert part._pil is None and part.is_lazy and image_sha256(part.pil) == part.sha256
    assert copy._pil is image  # a copy made before keeps its own reference; release in place where it is held
    assert part._load.nbytes < pixels.image_nbytes(image)


def test_image_cache_stays_under_its_byte_limit_least_recent_out_first():
    cache = pixels.ImageCache("t", max_bytes=3 * 32 * 32 * 4)
    made = []

    def make(i):
        made.append(i)
        return Image.new("RGB", (32, 32), (i, 0, 0))

    for i in range(5):
        cache.get(i, lambda i=i: make(i))
    assert len(cache) == 3 and cache.bytes <= cache.max_bytes and cache.evictions == 2
    cache.get(4, lambda: make(99))  # a hit: nothing made
    cache.get(0, lambda: make(0))  # evicted earlier: made again
    assert made == [0, 1, 2, 3, 4, 0]
    m = cache.metrics()
    assert m["memory/t_entries"] == 3 and m["memory/t_hits"] == 1 and m["memory/t_misses"] == 6
    assert m["memory/t_mb"] == pytest.approx(3 * 32 * 32 * 4 / 2**20)
    cache.get("big", lambda: Image.new("RGB", (64, 64)))  # larger than the whole cache: not kept
    assert "big" not in cache._entries


def test_stored_demonstrations_are_read_lazily_from_the_run(tmp_path):
    chat = ChatFormat(load_processor(PERCEPTION))
    env = make_env("visual-search")
    try:
        cfg = SFTDataConfig(source="scripted", quality=0.5, max_total_tokens=1024, max_new_tokens=96)
        demos = load_sft_data(cfg, env, chat, num_train_tasks=4, num_eval_tasks=1, seed=0).train
        with RunStore.create(tmp_path / "run", meta=RunMeta.from_env(env)) as store:
            store.extend(demos)
        cfg = SFTDataConfig(source="run", path=tmp_path / "run", eval_fraction=0.0, max_total_tokens=1024,
                            max_new_tokens=96)
        stored = load_sft_data(cfg, env, chat).train
    finally:
        env.shutdown()
    assert pinned_bytes(stored) == 0 and all(p.is_lazy for t in stored for p in t.images)
    pixels.DECODED.clear()
    by_id = {t.id: t for t in demos}
    for t in stored:
        assert [s.token_ids for s in t.segments] == [s.token_ids for s in by_id[t.id].segments]
        assert [image_sha256(p.pil) for p in t.images] == [p.sha256 for p in by_id[t.id].images]


def test_a_large_grounding_file_opens_in_constant_memory_and_reads_rows_back(tmp_path):
    Image.new("RGB", (64, 48), (10, 200, 30)).save(tmp_path / "a.png")
    n = 20_000
    with open(tmp_path / "rows.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({"image": "a.png", "expression": f"the green one number {i} " + "x" * 200,
                                "bbox": [1, 2, 30 + i % 9, 40]}) + "\n")
    env = make_env("grounding", config={"data": {"test": str(tmp_path / "rows.jsonl")}})
    tracemalloc.start()
    tasks = env.load_tasks("test")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(tasks) == n
    assert peak < 2 * 2**20  # the file's rows would be ~6 MB as dicts; the index is 16 bytes a row
    task = tasks[12_345]
    assert task.metadata["expression"].startswith("the green one number 12345 ") and task.answer == [1, 2, 30 + 12_345 % 9, 40]
    assert task.images[0].is_lazy
