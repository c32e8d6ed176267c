"""ToolCache: record a run's tool calls once, replay them bit-exactly without running any tool."""

from __future__ import annotations

import pytest
from PIL import Image
from scripted_run import NoteArgs, TinyEnv, ZoomArgs, comparable, run_group, tz_note, tz_zoom

from agent_grpo.boxes import CoordFrame
from agent_grpo.content import ImagePart
from agent_grpo.store import ToolCache, call_key
from agent_grpo.tools.api import ToolContext, ToolOutput, tool
from agent_grpo.tools.registry import ToolRegistry
from agent_grpo.trajectory import ToolErrorKind


@tool(name="tz_zoom", box_frame=CoordFrame.PIXELS, version="1")
def zoom_must_not_run(args: ZoomArgs, ctx: ToolContext) -> ToolOutput:
    """Stands in for tz_zoom during replay: fails the test if it is ever called."""
    raise AssertionError("replay ran the tool")


@tool(name="tz_note", returns_images=False, version="1")
def note_must_not_run(args: NoteArgs, ctx: ToolContext) -> ToolOutput:
    """Stands in for tz_note during replay."""
    raise AssertionError("replay ran the tool")


def _run(tools: ToolRegistry, steps=(0, 1)):
    env = TinyEnv(tools=tools)
    try:
        return [t for step in steps for task in env.load_tasks(n=2) for t in run_group(env, task, step)]
    finally:
        env.shutdown()


def test_record_then_replay_is_bit_exact_without_running_tools(tmp_path):
    recorder = ToolCache(tmp_path / "cache", mode="record")
    recorded = _run(recorder.wrap(ToolRegistry([tz_zoom, tz_note])))
    recorder.close()
    assert recorder.recorded > 0

    replayer = ToolCache(tmp_path / "cache", mode="replay")  # a fresh object: read back from disk
    replayed = _run(replayer.wrap(ToolRegistry([zoom_must_not_run, note_must_not_run])))
    assert replayer.misses == []
    assert replayer.hits == sum(1 for t in recorded for r in t.tool_results if r.error_kind != ToolErrorKind.PARSE)
    assert [comparable(t) for t in replayed] == [comparable(t) for t in recorded]
    # tool errors (the degenerate box) replay word for word
    bad_box = [r for t in replayed for r in t.tool_results if r.error_kind == ToolErrorKind.BAD_BOX]
    assert bad_box and "is empty or outside image 0" in bad_box[0].error


def test_replay_miss_is_an_observation_and_listed(tmp_path):
    cache = ToolCache(tmp_path / "cache", mode="replay")
    trajs = _run(cache.wrap(ToolRegistry([zoom_must_not_run, note_must_not_run])), steps=(0,))
    assert cache.misses
    errors = [r.error for t in trajs for r in t.tool_results if r.error]
    assert any("tool cache miss" in e for e in errors)


def test_auto_mode_records_misses_and_replays_hits(tmp_path):
    cache = ToolCache(tmp_path / "cache", mode="auto")
    first = _run(cache.wrap(ToolRegistry([tz_zoom, tz_note])), steps=(0,))
    recorded, hits = cache.recorded, cache.hits
    second = _run(cache.wrap(ToolRegistry([tz_zoom, tz_note])), steps=(0,))
    assert cache.recorded == recorded and cache.hits > hits
    assert [comparable(t) for t in first] == [comparable(t) for t in second]


def _ctx(color: str = "red", size: int = 32) -> ToolContext:
    return ToolContext(images=[ImagePart.from_pil(Image.new("RGB", (size, size), color))])


def test_key_depends_on_tool_version_arguments_images_and_state():
    args = ZoomArgs(bbox_2d=[0, 0, 8, 8])
    base = call_key(tz_zoom, args, _ctx())
    assert base == call_key(tz_zoom, ZoomArgs(bbox_2d=[0, 0, 8, 8]), _ctx())  # stable, not Python's hash()
    newer = tz_zoom.model_copy(update={"manifest": tz_zoom.manifest.model_copy(update={"version": "2"})})
    stateful = _ctx()
    stateful.state["calls"] = 1
    others = [
        call_key(newer, args, _ctx()),
        call_key(tz_zoom, ZoomArgs(bbox_2d=[0, 0, 9, 8]), _ctx()),
        call_key(tz_zoom, args, _ctx("blue")),
        call_key(tz_zoom, args, stateful),
    ]
    assert base not in others and len(set(others)) == len(others)


def test_bad_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="record"):
        ToolCache(tmp_path, mode="write")  # type: ignore[arg-type]


def test_a_damaged_cache_line_is_a_miss_not_a_crash(tmp_path):
    from agent_grpo.store.tool_cache import CALLS, ToolCache

    tmp_path.mkdir(exist_ok=True)
    (tmp_path / CALLS).write_text('{"key": "k", "tool"\n')
    cache = ToolCache(tmp_path, mode="replay")
    assert len(cache) == 0 and len(cache.damaged) == 1
