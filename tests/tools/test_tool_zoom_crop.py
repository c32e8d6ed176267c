"""zoom_in and crop: pixel-exact crops, coordinate frames, zooms inside zooms, growth, budget downscaling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from agent_grpo_tools import _common
from pydantic import BaseModel

from agent_grpo.boxes import Box, CoordFrame
from agent_grpo.budget import VisualBudget
from agent_grpo.tools.api import ToolContext, ToolOutput, tool
from agent_grpo.tools.isolation import ToolWorkers

# These tests patch a tool module's globals, which a worker process would not see.
IN_PROCESS = ToolWorkers(isolate=False)


class _BoxArgs(BaseModel):
    bbox_2d: list[float]
    image: int = 0


@tool(box_frame=CoordFrame.UNIT)
def unit_crop(args: _BoxArgs, ctx: ToolContext) -> ToolOutput:
    """Crop a region written in [0, 1] (test tool)."""
    return ToolOutput(images=[ctx.region(args.bbox_2d, args.image).crop()])


def test_zoom_in_returns_the_exact_pixels_and_provenance(builtins, make_ctx, call, pattern):
    arr = pattern(200, 120)
    run = call(builtins, "zoom_in", {"bbox_2d": [50, 20, 150, 80], "label": "sign"}, make_ctx(arr))
    assert run.error is None
    [out] = run.output.images
    np.testing.assert_array_equal(np.asarray(out.image), arr[20:80, 50:150])
    assert out.parent == 0
    assert out.box == Box(x1=50, y1=20, x2=150, y2=80)
    assert run.output.metrics["zoom_area_fraction"] == pytest.approx(100 * 60 / (200 * 120))
    assert run.output.metrics["box_expanded"] == 0.0
    assert run.output.metrics["downscaled"] == 0.0
    assert run.output.text == "Zoomed into [50, 20, 150, 80] of image 0 (sign); shown at 100x60 pixels."


def test_fractional_pixel_boxes_round_to_the_nearest_pixel(builtins, make_ctx, call, pattern):
    arr = pattern(200, 120)
    run = call(builtins, "zoom_in", {"bbox_2d": [49.6, 20.4, 149.7, 79.8]}, make_ctx(arr))
    np.testing.assert_array_equal(np.asarray(run.output.images[0].image), arr[20:80, 50:150])


@pytest.mark.parametrize(
    "name, box",
    [
        ("zoom_in", [50, 24, 150, 96]),  # pixels of the 200 x 120 image
        ("crop", [250, 200, 750, 800]),  # [0, 1000]
        ("unit_crop", [0.25, 0.2, 0.75, 0.8]),  # [0, 1]
    ],
)
def test_every_frame_lands_on_the_same_pixels(builtins, make_ctx, call, pattern, name, box):
    builtins.register(unit_crop)
    arr = pattern(200, 120)
    run = call(builtins, name, {"bbox_2d": box}, make_ctx(arr))
    assert run.error is None, run.error
    [out] = run.output.images
    np.testing.assert_array_equal(np.asarray(out.image), arr[24:96, 50:150])
    assert out.box == Box(x1=50, y1=24, x2=150, y2=96)


def test_zoom_inside_a_zoom_maps_back_to_the_original(builtins, make_ctx, call, show, pattern):
    arr = pattern(300, 200)
    ctx = make_ctx(arr)
    first = call(builtins, "zoom_in", {"bbox_2d": [40, 30, 240, 190]}, ctx)
    one = show(ctx, first.output.images[0])
    # Pixels of image 1 (200 x 160): offset (40, 30) in the original.
    second = call(builtins, "zoom_in", {"bbox_2d": [10, 20, 110, 100], "image": one}, ctx)
    [out] = second.output.images
    assert out.parent == one
    assert out.box == Box(x1=50, y1=50, x2=150, y2=130)
    np.testing.assert_array_equal(np.asarray(out.image), arr[50:130, 50:150])
    assert second.output.metrics["zoom_area_fraction"] == pytest.approx(100 * 80 / (300 * 200))
    # A third level, through crop's [0, 1000] frame on image 2 (100 x 80): its right half.
    two = show(ctx, out)
    third = call(builtins, "crop", {"bbox_2d": [500, 0, 1000, 1000], "image": two}, ctx)
    assert third.output.images[0].box == Box(x1=100, y1=50, x2=150, y2=130)
    np.testing.assert_array_equal(np.asarray(third.output.images[0].image), arr[50:130, 100:150])


def test_zoom_inside_a_downscaled_zoom_still_maps_exactly(builtins, make_ctx, call, show, pattern, monkeypatch):
    monkeypatch.setattr(_common, "STORED_PIXEL_CAP", 8000)  # force the storage cap to apply
    arr = pattern(300, 200)
    ctx = make_ctx(arr)
    first = call(builtins, "zoom_in", {"bbox_2d": [40, 30, 240, 190]}, ctx, pool=IN_PROCESS)  # 200 x 160 -> 100 x 80
    assert first.output.images[0].image.size == (100, 80)
    assert first.output.metrics["downscaled"] == 1.0
    assert first.output.images[0].box == Box(x1=40, y1=30, x2=240, y2=190)  # still the region it shows
    one = show(ctx, first.output.images[0])
    second = call(builtins, "zoom_in", {"bbox_2d": [5, 10, 40, 40], "image": one}, ctx, pool=IN_PROCESS)
    # Each pixel of image 1 spans 2 x 2 original pixels.
    assert second.output.images[0].box == Box(x1=50, y1=50, x2=120, y2=110)
    assert second.output.metrics["zoom_area_fraction"] == pytest.approx(70 * 60 / (300 * 200))


@pytest.mark.parametrize(
    "box, expected",
    [
        ([2, 3, 6, 8], (0, 0, 28, 28)),  # top-left corner: shifted inside
        ([95, 75, 99, 79], (72, 52, 100, 80)),  # bottom-right corner
        ([40, 30, 50, 34], (31, 18, 59, 46)),  # centred growth
        ([40, 30, 90, 34], (40, 18, 90, 46)),  # only the short side grows
    ],
)
def test_small_boxes_grow_to_28_pixels_inside_the_image(builtins, make_ctx, call, pattern, box, expected):
    arr = pattern(100, 80)
    run = call(builtins, "zoom_in", {"bbox_2d": box}, make_ctx(arr))
    x1, y1, x2, y2 = expected
    [out] = run.output.images
    assert out.box == Box(x1=x1, y1=y1, x2=x2, y2=y2)
    np.testing.assert_array_equal(np.asarray(out.image), arr[y1:y2, x1:x2])
    assert run.output.metrics["box_expanded"] == 1.0
    assert "enlarged to at least 28 pixels" in run.output.text


def test_growth_is_capped_by_a_small_image(builtins, make_ctx, call, pattern):
    arr = pattern(100, 20)
    run = call(builtins, "zoom_in", {"bbox_2d": [10, 5, 12, 7]}, make_ctx(arr))
    box = run.output.images[0].box
    assert (box.y1, box.y2) == (0, 20)
    assert 0 <= box.x1 and box.x2 <= 100 and box.width >= 20


def test_large_crops_keep_full_resolution_under_a_small_view_budget(builtins, make_ctx, call, pattern):
    # The model's view is resized at encoding time; the stored crop keeps the original pixels.
    budget = VisualBudget(max_images=10, max_pixels_per_image=224 * 224)
    arr = pattern(640, 480)
    run = call(builtins, "zoom_in", {"bbox_2d": [0, 0, 600, 400]}, make_ctx(arr, budget=budget))
    [out] = run.output.images
    assert out.image.size == (600, 400)
    np.testing.assert_array_equal(np.asarray(out.image), arr[0:400, 0:600])
    assert run.output.metrics["downscaled"] == 0.0


def test_crops_over_the_storage_cap_are_downscaled_keeping_aspect(builtins, make_ctx, call, pattern, monkeypatch):
    monkeypatch.setattr(_common, "STORED_PIXEL_CAP", 224 * 224)
    run = call(builtins, "zoom_in", {"bbox_2d": [0, 0, 600, 400]}, make_ctx(pattern(640, 480)), pool=IN_PROCESS)
    [out] = run.output.images
    w, h = out.image.size
    assert w * h <= 224 * 224
    assert w / h == pytest.approx(600 / 400, rel=0.01)
    assert math.isclose(w * h, 224 * 224, rel_tol=0.02)  # downscaled, not shrunk needlessly
    assert out.box == Box(x1=0, y1=0, x2=600, y2=400)
    assert run.output.metrics["downscaled"] == 1.0
    assert f"shown at {w}x{h} pixels" in run.output.text


def test_deepeyes_call_works_through_the_alias(builtins, make_ctx, call, pattern):
    arr = pattern(200, 120)
    run = call(
        builtins, "image_zoom_in_tool", {"bbox_2d": [0, 0, 100, 60], "label": "the red car"}, make_ctx(arr)
    )
    assert run.error is None
    assert "(the red car)" in run.output.text
    np.testing.assert_array_equal(np.asarray(run.output.images[0].image), arr[:60, :100])


def test_crop_does_not_grow_small_boxes(builtins, make_ctx, call, pattern):
    arr = pattern(200, 120)
    # [0, 1000] -> pixels [100, 60, 102, 61.2]: a 2 x 1 pixel crop.
    run = call(builtins, "crop", {"bbox_2d": [500, 500, 510, 510]}, make_ctx(arr))
    [out] = run.output.images
    np.testing.assert_array_equal(np.asarray(out.image), arr[60:61, 100:102])
    assert run.output.metrics["box_expanded"] == 0.0
    assert "pixels [100, 60, 102, 61]" in run.output.text


def test_crop_of_a_sub_pixel_box_is_one_pixel(builtins, make_ctx, call, pattern):
    arr = pattern(200, 120)
    run = call(builtins, "crop", {"bbox_2d": [500, 500, 500.1, 500.1]}, make_ctx(arr))
    np.testing.assert_array_equal(np.asarray(run.output.images[0].image), arr[60:61, 100:101])
    assert run.output.metrics["box_expanded"] == 1.0


def test_crop_picks_the_chosen_image(builtins, make_ctx, call, pattern):
    a, b = pattern(200, 120), pattern(100, 100)[::-1].copy()
    run = call(builtins, "crop", {"bbox_2d": [0, 0, 500, 500], "image": 1}, make_ctx(a, b))
    [out] = run.output.images
    assert out.parent == 1
    np.testing.assert_array_equal(np.asarray(out.image), b[:50, :50])
    assert out.box == Box(x1=0, y1=0, x2=50, y2=50)  # in image 1's own (root) frame
