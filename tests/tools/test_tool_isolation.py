"""Tool calls run in worker processes: a stuck, GIL-holding or exiting tool costs at most its own time-out."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hostile_tools import hostile_registry
from PIL import Image

from agent_grpo.content import ImagePart
from agent_grpo.tools.api import ToolContext
from agent_grpo.tools.isolation import ToolWorkers
from agent_grpo.tools.runner import ToolJob, run_tool_calls
from agent_grpo.trajectory import ToolCall, ToolErrorKind

K = ToolErrorKind
TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workers():
    pool = ToolWorkers(max_workers=4)
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def registry():
    return hostile_registry()


def _ctx() -> ToolContext:
    pixels = np.random.default_rng(0).integers(0, 255, size=(64, 96, 3), dtype=np.uint8)
    return ToolContext(images=[ImagePart.from_pil(Image.fromarray(pixels))])


def _jobs(names, ctx=None, states=None):
    ctx = ctx or _ctx()
    return [ToolJob(call=ToolCall(id=f"c{i}", name=n, raw=""), context=ctx, states=states if states is not None else {})
            for i, n in enumerate(names)]


@pytest.mark.slow
def test_hung_calls_cost_only_their_own_time_out(workers, registry):
    # Five hung calls and a normal one in the same turn, with four workers: before, the four pool threads
    # stayed stuck and every later call "timed out"; and the queued ones had their clock running while queued.
    start = time.perf_counter()
    runs = run_tool_calls(_jobs(["hang"] * 5 + ["echo"]), registry, pool=workers)
    elapsed = time.perf_counter() - start
    assert [r.kind for r in runs[:5]] == [K.TIMEOUT] * 5
    assert all(r.error == "hang timed out after 0.5 s" and r.duration_s == 0.5 for r in runs[:5])
    assert runs[5].error is None and runs[5].output.text == "hi #1"
    assert runs[5].duration_s < 5.0  # its own limit, counted from when it started, not while it queued
    assert elapsed >= 1.0  # the fifth hung call waited for a worker and still got its full 0.5 s
    # The pool is healthy afterwards: a normal call takes milliseconds, not a time-out.
    [run] = run_tool_calls(_jobs(["echo"]), registry, pool=workers)
    assert run.error is None and run.duration_s < 1.0


@pytest.mark.slow
def test_a_tool_holding_the_gil_is_cut_at_its_limit(workers, registry):
    start = time.perf_counter()
    runs = run_tool_calls(_jobs(["hog_gil", "echo"]), registry, pool=workers)
    elapsed = time.perf_counter() - start
    assert runs[0].kind == K.TIMEOUT and runs[0].error == "hog_gil timed out after 0.5 s"
    assert runs[1].output.text == "hi #1"
    assert elapsed < 10.0  # sum(range(10**12)) would hold a thread (and the GIL) for hours


def test_exits_and_interrupts_inside_a_tool_are_tool_errors(workers, registry):
    runs = run_tool_calls(_jobs(["exits", "interrupts", "dies", "echo"]), registry, pool=workers)
    assert runs[0].kind == K.EXCEPTION and runs[0].error == "exits failed: SystemExit: 3"
    assert runs[1].kind == K.EXCEPTION and runs[1].error.startswith("interrupts failed: KeyboardInterrupt")
    assert runs[2].kind == K.EXCEPTION and "worker process died" in runs[2].error
    assert runs[3].output.text == "hi #1"


def test_state_comes_back_from_the_worker(workers, registry):
    states: dict = {}
    texts = [run_tool_calls(_jobs(["echo"], states=states), registry, pool=workers)[0].output.text for _ in range(3)]
    assert texts == ["hi #1", "hi #2", "hi #3"] and states == {"echo": {"n": 3}}


@pytest.mark.parametrize(
    "name, message",
    [
        ("numpy_image", "returned image 0 as ndarray, expected a PIL image"),
        ("empty_image", "cannot be shown to the model: image size must be positive, got 0x0"),
        ("sliver_image", "cannot be shown to the model: aspect ratio over 200 is not supported by Qwen-VL, got 500x1"),
        ("orphan_image", "returned image 0 with parent 99; valid images are 0..0"),
    ],
)
def test_unusable_tool_images_are_tool_errors(workers, registry, name, message):
    [run] = run_tool_calls(_jobs([name]), registry, pool=workers)
    assert run.kind == K.EXCEPTION and message in run.error, run.error


def test_odd_image_modes_are_converted(workers, registry):
    [run] = run_tool_calls(_jobs(["odd_mode_image"]), registry, pool=workers)
    [out] = run.output.images
    assert out.image.mode == "RGB" and out.image.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white


@pytest.mark.slow
def test_the_interpreter_exits_promptly_after_a_hung_call():
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(TESTS)!r})
        import numpy as np
        from PIL import Image
        from hostile_tools import hostile_registry
        from agent_grpo.content import ImagePart
        from agent_grpo.tools.api import ToolContext
        from agent_grpo.tools.runner import ToolJob, run_tool_calls
        from agent_grpo.trajectory import ToolCall
        ctx = ToolContext(images=[ImagePart.from_pil(Image.new("RGB", (32, 32)))])
        [run] = run_tool_calls([ToolJob(call=ToolCall(id="c", name="hang", raw=""), context=ctx)], hostile_registry())
        print(run.kind)
        """
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "timeout"
    assert time.perf_counter() - start < 60  # before: the hung thread (600 s) kept the process alive
