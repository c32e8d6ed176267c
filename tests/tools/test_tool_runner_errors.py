"""Every way a tool call can fail comes back from run_tool_calls as a ToolRun with a kind and a clear message."""

from __future__ import annotations

import threading

import pytest
from pydantic import BaseModel

from agent_grpo.budget import VisualBudget
from agent_grpo.errors import ToolError
from agent_grpo.tools.api import ToolContext, ToolOutput, tool
from agent_grpo.tools.registry import ToolRegistry
from agent_grpo.tools.runner import ToolJob, run_tool_calls
from agent_grpo.trajectory import ToolCall, ToolErrorKind

K = ToolErrorKind


class _NoArgs(BaseModel):
    pass


@tool(returns_images=False)
def boom(args: _NoArgs, ctx: ToolContext) -> ToolOutput:
    """Always fails (test tool)."""
    return ToolOutput(text=str(1 / 0))


@tool(returns_images=False)
def wrong_return(args: _NoArgs, ctx: ToolContext) -> ToolOutput:
    """Returns a string instead of a ToolOutput (test tool)."""
    return "done"  # type: ignore[return-value]


@tool(returns_images=False)
def odd_kind(args: _NoArgs, ctx: ToolContext) -> ToolOutput:
    """Raises a ToolError with a kind the runner does not know (test tool)."""
    raise ToolError("the lens cap is on", kind="lens_cap")


@tool(returns_images=False)
def counter(args: _NoArgs, ctx: ToolContext) -> ToolOutput:
    """Counts its calls in its per-trajectory state (test tool)."""
    ctx.state["n"] = ctx.state.get("n", 0) + 1
    return ToolOutput(text=str(ctx.state["n"]))


@pytest.fixture
def ctx(make_ctx, pattern) -> ToolContext:
    return make_ctx(pattern(200, 120))


def test_parse_error(builtins, ctx):
    tc = ToolCall(
        id="c", name="", raw="{zoom_in: [1, 2", parse_error="Expecting property name: line 1 column 2"
    )
    [run] = run_tool_calls([ToolJob(call=tc, context=ctx)], builtins)
    assert run.kind == K.PARSE and run.output is None
    assert run.error == "could not parse the tool call: Expecting property name: line 1 column 2"


def test_unknown_tool_lists_the_available_ones(builtins, ctx, call):
    run = call(builtins, "zoom", {"bbox_2d": [0, 0, 10, 10]}, ctx)
    assert run.kind == K.UNKNOWN_TOOL
    assert run.error == "unknown tool 'zoom'; available tools: crop, enhance, flip, grid, rotate, zoom_in"


@pytest.mark.parametrize(
    "name, arguments, message",
    [
        ("zoom_in", {}, "bbox_2d: Field required"),
        ("zoom_in", {"label": "cat"}, "bbox_2d: Field required"),
        ("zoom_in", {"bbox_2d": "10, 10, 50, 50"}, "bbox_2d: Input should be a valid list"),
        ("zoom_in", {"bbox_2d": [10, 10, 50]}, "bbox_2d: List should have at least 4 items"),
        ("zoom_in", {"bbox_2d": [10, 10, 50, 50, 60]}, "bbox_2d: List should have at most 4 items"),
        ("zoom_in", {"bbox_2d": [10, "a", 50, 50]}, "bbox_2d.1: Input should be a valid number"),
        ("zoom_in", {"bbox_2d": [10, 10, 50, 50], "zoom": 2}, "zoom: Extra inputs are not permitted"),
        (
            "zoom_in",
            {"bbox_2d": [10, 10, 50, 50], "image": "first"},
            "image: Input should be a valid integer",
        ),
        ("crop", {"bbox_2d": [10, 10, 50, 50], "label": "x"}, "label: Extra inputs are not permitted"),
        ("flip", {"direction": "diagonal"}, "direction: Input should be 'horizontal' or 'vertical'"),
        ("enhance", {"strength": 100}, "strength: Input should be less than or equal to 4"),
        ("grid", {"rows": 0}, "rows: Input should be greater than or equal to 1"),
    ],
)
def test_schema_violations(builtins, ctx, call, name, arguments, message):
    run = call(builtins, name, arguments, ctx)
    assert run.kind == K.INVALID_ARGUMENTS
    assert run.error.startswith(f"invalid arguments for {name}: ")
    assert message in run.error


@pytest.mark.parametrize(
    "name, box, message",
    [
        ("zoom_in", [10, 10, 10, 50], "is empty or outside image 0 (200x120 pixels)"),
        ("zoom_in", [50, 10, 10, 50], "box must have x1 <= x2 and y1 <= y2, got [50.0, 10.0, 10.0, 50.0]"),
        ("zoom_in", [500, 500, 600, 600], "is empty or outside image 0"),
        ("zoom_in", [-300, 0, 20, 20], "lies mostly outside image 0"),
        ("zoom_in", [float("nan"), 0, 20, 20], "box coordinates must be finite numbers"),
        ("zoom_in", [0, 0, float("inf"), 20], "box coordinates must be finite numbers"),
        ("crop", [0, 0, 1e308, 1e308], "box coordinates must be finite numbers"),  # overflows when scaled
        ("crop", [0, 0, 0, 0], "is empty or outside image 0"),
    ],
)
def test_bad_boxes(builtins, make_ctx, call, pattern, name, box, message):
    width = 2000 if box[2] == 1e308 else 200  # over 1000 px wide, [0, 1000] scales up and overflows
    run = call(builtins, name, {"bbox_2d": box}, make_ctx(pattern(width, 120)))
    assert run.kind == K.BAD_BOX, run.error
    assert message in run.error
    assert "pydantic" not in run.error and "\n" not in run.error  # written for the model, not for us


@pytest.mark.parametrize("name", ["zoom_in", "crop", "rotate", "flip", "enhance", "grid"])
@pytest.mark.parametrize("index", [1, -1, 10**30])
def test_bad_image_index(builtins, ctx, call, name, index):
    arguments = {"image": index, "bbox_2d": [0, 0, 10, 10], "angle": 90, "direction": "vertical"}
    allowed = builtins.get(name).arguments.model_fields
    run = call(builtins, name, {k: v for k, v in arguments.items() if k in allowed}, ctx)
    assert run.kind == K.BAD_IMAGE
    assert run.error == f"image {index} does not exist; valid images are 0..0"


def test_tool_exceptions_are_reported_not_raised(ctx, call):
    reg = ToolRegistry([boom, wrong_return, odd_kind])
    run = call(reg, "boom", {}, ctx)
    assert run.kind == K.EXCEPTION and run.error == "boom failed: ZeroDivisionError: division by zero"
    run = call(reg, "wrong_return", {}, ctx)
    assert run.kind == K.EXCEPTION and "returned str, expected ToolOutput" in run.error
    run = call(reg, "odd_kind", {}, ctx)
    assert run.kind == K.EXCEPTION and run.error == "the lens cap is on"


def test_time_out_and_the_order_of_results(builtins, ctx):
    release = threading.Event()

    @tool(returns_images=False, timeout_s=0.05)
    def slow(args: _NoArgs, ctx: ToolContext) -> ToolOutput:
        """Waits until released (test tool)."""
        release.wait(5)
        return ToolOutput(text="late")

    builtins.register(slow)
    calls = [
        ToolCall(id="a", name="slow", raw=""),
        ToolCall(id="b", name="zoom_in", arguments={"bbox_2d": [0, 0, 50, 50]}, raw=""),
        ToolCall(id="c", name="nope", raw=""),
    ]
    try:
        runs = run_tool_calls([ToolJob(call=c, context=ctx) for c in calls], builtins, timeout_s=5)
    finally:
        release.set()
    assert [r.call.id for r in runs] == ["a", "b", "c"]
    assert runs[0].kind == K.TIMEOUT and runs[0].error == "slow timed out after 0.05 s"
    assert runs[1].error is None and runs[1].output.images
    assert runs[2].kind == K.UNKNOWN_TOOL


def test_runner_default_time_out(ctx, call):
    release = threading.Event()

    @tool(returns_images=False)
    def sleepy(args: _NoArgs, ctx: ToolContext) -> ToolOutput:
        """Waits until released (test tool)."""
        release.wait(5)
        return ToolOutput()

    try:
        run = call(ToolRegistry([sleepy]), "sleepy", {}, ctx, timeout_s=0.05)
    finally:
        release.set()
    assert run.kind == K.TIMEOUT and run.error == "sleepy timed out after 0.05 s"


def test_image_budget_exhausted(builtins, make_ctx, call, pattern):
    ctx = make_ctx(pattern(200, 120), budget=VisualBudget(max_images=3))
    ctx.usage.images = 3
    run = call(builtins, "zoom_in", {"bbox_2d": [0, 0, 50, 50]}, ctx)
    assert run.kind == K.BUDGET
    assert run.error == "image budget exhausted (3 images); answer with what you have seen"
    builtins.register(counter)  # a text-only tool still runs
    assert call(builtins, "counter", {}, ctx).output.text == "1"


def test_per_tool_state_lives_with_the_trajectory(ctx):
    reg = ToolRegistry([counter])

    def count(states: dict) -> str:
        job = ToolJob(call=ToolCall(id="c", name="counter", raw=""), context=ctx, states=states)
        return run_tool_calls([job], reg)[0].output.text

    mine: dict = {}
    assert [count(mine) for _ in range(3)] == ["1", "2", "3"]
    assert count({}) == "1"  # another trajectory starts afresh


def test_a_thin_box_is_a_bad_box_not_an_unshowable_sliver(builtins, make_ctx, call, pattern):
    ctx = make_ctx(pattern(1000, 1000))
    run = call(builtins, "crop", {"bbox_2d": [0, 500, 1000, 501]}, ctx)  # 1000 x 1 pixels
    assert run.kind == K.BAD_BOX
    assert run.error == (
        "box [0.0, 500.0, 1000.0, 501.0] is 1000x1 pixels of image 0, too thin to show (aspect ratio over 200); "
        "choose a wider box"
    )
    run = call(builtins, "zoom_in", {"bbox_2d": [0, 500, 1000, 501]}, ctx)  # grown to 28 px high: fine
    assert run.error is None and run.output.images[0].image.size == (1000, 28)
