"""Fuzzing: whatever JSON-ish arguments a model writes, the built-in tools answer with an output or a clear error."""

from __future__ import annotations

import math

import numpy as np
import pytest
from agent_grpo_tools import _common
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from agent_grpo.boxes import Box
from agent_grpo.budget import VisualBudget
from agent_grpo.content import ImagePart
from agent_grpo.tools.api import ToolContext
from agent_grpo.tools.isolation import ToolWorkers
from agent_grpo.tools.registry import load_tools
from agent_grpo.tools.runner import ToolJob, run_tool_calls
from agent_grpo.trajectory import ToolCall, ToolErrorKind

BUDGET = VisualBudget(max_images=10, max_pixels_per_image=40 * 40, min_pixels_per_image=28 * 28)
ROOT_W, ROOT_H = 64, 48

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
junk = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
    max_leaves=10,
)
edge_numbers = st.sampled_from(
    [0, -0.0, 1e308, -1e308, 5e-324, 10**30, float("nan"), float("inf"), -float("inf")]
)
# Pixel-sized (the images are 64 x 48 and smaller), [0, 1000]-sized, and extreme.
numbers = st.integers(min_value=-10, max_value=70) | st.floats(min_value=-100, max_value=1100) | edge_numbers


@st.composite
def boxes(draw) -> list[float]:
    """Four numbers, often in order (x1 <= x2, y1 <= y2) so that many boxes reach the tool's own code."""
    x1, y1, x2, y2 = (draw(numbers) for _ in range(4))
    if draw(st.booleans()):
        try:
            x1, x2 = sorted((x1, x2))
            y1, y2 = sorted((y1, y2))
        except TypeError:
            pass
    return [x1, y1, x2, y2]


# Well-typed values at the edges: what a model that learned the format but not the sense would write.
TYPED = {
    "bbox_2d": boxes(),
    "image": st.sampled_from([0, 0, 1, 2, -1, 3]),
    "label": st.none() | st.text(max_size=300),
    "angle": numbers,
    "direction": st.sampled_from(["horizontal", "vertical", "diagonal"]),
    "method": st.sampled_from(["contrast", "sharpen", "both", "blur"]),
    "strength": st.floats(min_value=0, max_value=5) | edge_numbers,
    "rows": st.integers(min_value=-1, max_value=10),
    "cols": st.integers(min_value=-1, max_value=10),
}
# Anything JSON can hold, for any field, plus unknown keys.
JUNK = {name: junk | st.lists(junk, max_size=6) for name in TYPED}
BUILTINS = ["crop", "enhance", "flip", "grid", "rotate", "zoom_in"]
_ZOOM_ONLY = load_tools().subset(["zoom_in"])


def typed_arguments(fields: list[str]) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({}, optional={f: TYPED[f] for f in fields})


def junk_arguments(fields: list[str]) -> st.SearchStrategy[dict]:
    known = st.fixed_dictionaries({}, optional={f: JUNK[f] | TYPED[f] for f in fields})
    extra = st.dictionaries(st.text(max_size=8), junk, max_size=2)
    return st.tuples(known, extra).map(lambda t: {**t[1], **t[0]})


@pytest.fixture(scope="module")
def setting():
    """Three images: the root, a zoom of it (box known) and a rotation of it (no box)."""
    idx = np.arange(ROOT_W * ROOT_H).reshape(ROOT_H, ROOT_W)
    root = Image.fromarray(np.stack([idx % 256, idx // 256, 255 - idx % 256], -1).astype(np.uint8))
    images = [
        ImagePart.from_pil(root, observation=0),
        ImagePart.from_pil(
            root.crop((8, 8, 40, 40)),
            observation=1,
            source="tool",
            parent=0,
            box=Box(x1=8, y1=8, x2=40, y2=40),
        ),
        ImagePart.from_pil(root.rotate(90, expand=True), observation=2, source="tool", parent=0, box=None),
    ]
    pool = ToolWorkers(max_workers=2)
    yield load_tools().subset(BUILTINS), ToolContext(images=images, budget=BUDGET), pool
    pool.close()


@pytest.mark.parametrize("kind", ["typed", "junk"])
@pytest.mark.parametrize("name", BUILTINS)
def test_any_arguments_give_an_output_or_a_tool_error(setting, name, kind):
    registry, ctx, pool = setting
    fields = list(registry.get(name).arguments.model_fields)
    strategy = typed_arguments(fields) if kind == "typed" else junk_arguments(fields)

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(arguments=strategy)
    def check(arguments: dict) -> None:
        call = ToolCall(id="c", name=name, arguments=arguments, raw="")
        [run] = run_tool_calls([ToolJob(call=call, context=ctx)], registry, timeout_s=5, pool=pool)
        if run.output is None:
            assert run.error and run.kind is not None
            # Built-ins never fail by accident: only the model's mistakes, reported as such.
            assert run.kind not in (ToolErrorKind.EXCEPTION, ToolErrorKind.TIMEOUT), run.error
            return
        assert run.error is None
        assert all(isinstance(v, float) and math.isfinite(v) for v in run.output.metrics.values())
        for out in run.output.images:
            w, h = out.image.size
            assert w >= 1 and h >= 1 and w * h <= _common.STORED_PIXEL_CAP
            assert out.image.mode == "RGB"
            assert 0 <= out.parent < len(ctx.images)
            if out.box is not None:
                assert 0 <= out.box.x1 < out.box.x2 <= ROOT_W and 0 <= out.box.y1 < out.box.y2 <= ROOT_H

    check()


@st.composite
def inside_boxes(draw, width: int, height: int) -> list[int]:
    x1 = draw(st.integers(0, width - 1))
    y1 = draw(st.integers(0, height - 1))
    return [x1, y1, draw(st.integers(x1 + 1, width)), draw(st.integers(y1 + 1, height))]


@settings(max_examples=200, deadline=None)
@given(box=inside_boxes(ROOT_W, ROOT_H))
def test_any_box_inside_the_image_zooms_onto_exactly_its_pixels(box):
    """Boxes are grown to 28 px (never shrunk), stay inside the image, and the pixels match the original."""
    arr = np.arange(ROOT_W * ROOT_H * 3, dtype=np.uint32).reshape(ROOT_H, ROOT_W, 3) % 251
    root = ImagePart.from_pil(Image.fromarray(arr.astype(np.uint8)), observation=0)
    roomy = VisualBudget(max_pixels_per_image=ROOT_W * ROOT_H, min_pixels_per_image=28 * 28)
    ctx = ToolContext(images=[root], budget=roomy)
    call = ToolCall(id="c", name="zoom_in", arguments={"bbox_2d": box}, raw="")
    [run] = run_tool_calls([ToolJob(call=call, context=ctx)], _ZOOM_ONLY)
    [out] = run.output.images
    x1, y1, x2, y2 = (int(v) for v in (out.box.x1, out.box.y1, out.box.x2, out.box.y2))
    assert 0 <= x1 <= box[0] and box[2] <= x2 <= ROOT_W and 0 <= y1 <= box[1] and box[3] <= y2 <= ROOT_H
    assert x2 - x1 == max(box[2] - box[0], 28) and y2 - y1 == max(box[3] - box[1], 28)
    np.testing.assert_array_equal(np.asarray(out.image), arr[y1:y2, x1:x2])
    assert run.output.metrics["box_expanded"] == float(box[2] - box[0] < 28 or box[3] - box[1] < 28)
