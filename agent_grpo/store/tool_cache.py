"""Record and replay tool executions, keyed by (tool, version, arguments, input images).

    cache = ToolCache("tests/data/tool_cache", mode="record")
    env = MyEnv(tools=cache.wrap(load_tools()))      # run once: every call is executed and recorded
    cache = ToolCache("tests/data/tool_cache", mode="replay")
    env = MyEnv(tools=cache.wrap(load_tools()))      # later, on any CPU: no tool code runs at all
    assert not cache.misses

The key hashes the tool name and manifest version, its validated arguments, the content hash and
provenance of every image in the call's context (a tool may read any of them), the visual budget
(tools downscale to it), the coordinate frame and the tool's per-trajectory state. Outputs are kept
exactly: text, metrics, each image as a PNG (same pixel hash on the way back), its parent and box.
A `ToolError` is recorded too and raised again on replay, so error observations replay word for word.
Modes: `record` always runs and stores; `replay` never runs (a miss becomes a tool error observation
and is listed in `misses`); `auto` replays hits and records misses. Time-outs are not recorded
(they happen outside the tool), and one cache folder takes one writing process at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from agent_grpo.boxes import Box
from agent_grpo.errors import ToolError
from agent_grpo.store import _jsonl
from agent_grpo.store.image_store import ImageStore
from agent_grpo.tools.api import Tool, ToolContext, ToolImage, ToolOutput
from agent_grpo.tools.registry import ToolRegistry

Mode = Literal["record", "replay", "auto"]
CALLS = "calls.jsonl"


class _Image(BaseModel):
    sha256: str
    parent: int
    box: Box | None = None


class CachedCall(BaseModel):
    """One recorded execution: its key, what went in (for people reading the file) and what came out."""

    key: str
    tool: str
    version: str
    arguments: dict[str, Any]
    input_images: list[str]
    text: str | None = None
    images: list[_Image] = Field(default_factory=list)
    metrics: dict[str, float] = Field(default_factory=dict)
    error: str | None = None
    error_kind: str | None = None


def call_key(tool: Tool, args: BaseModel, ctx: ToolContext) -> str:
    """The cache key of one call: a sha256 over everything a deterministic tool's output depends on."""
    payload = {
        "tool": tool.name,
        "version": tool.manifest.version,
        "arguments": args.model_dump(mode="json"),
        "images": [img.model_dump(mode="json") for img in ctx.images],  # sha256 + provenance
        "budget": ctx.budget.model_dump(mode="json"),
        "frame": str(ctx.box_frame),
        "state": ctx.state,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


class ToolCache:
    def __init__(self, path: str | Path, mode: Mode = "replay"):
        if mode not in ("record", "replay", "auto"):
            raise ValueError(f"tool cache mode must be 'record', 'replay' or 'auto', got {mode!r}")
        self.path = Path(path)
        self.mode = mode
        self.images = ImageStore(self.path / "images")
        self.misses: list[str] = []  # "tool(key[:12])" of calls replay mode could not answer
        self.hits = 0
        self.recorded = 0
        self._calls: dict[str, CachedCall] = {}
        self._lock = threading.Lock()
        self._fd = -1
        self.damaged: list[str] = []  # lines of calls.jsonl that are not calls (they are misses, not errors)
        for line in _jsonl.iter_lines(self.path / CALLS):  # a torn last line is simply not a hit
            try:
                call = CachedCall.model_validate_json(line.data)
            except ValidationError as e:
                self.damaged.append(f"{CALLS}: the line at byte {line.offset} is not a cached call: {e}")
                continue
            self._calls[call.key] = call

    def __len__(self) -> int:
        return len(self._calls)

    def wrap(self, registry: ToolRegistry) -> ToolRegistry:
        """A registry with the same tools (names, aliases, sources) whose calls go through this cache."""
        wrapped = ToolRegistry()
        for t in registry:
            wrapped.register(t.model_copy(update={"fn": self._wrap_fn(t)}), registry.source_of(t.name))
        return wrapped

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _wrap_fn(self, tool: Tool):
        def cached(args: BaseModel, ctx: ToolContext) -> ToolOutput:
            key = call_key(tool, args, ctx)
            hit = self._calls.get(key)
            if hit is not None and self.mode != "record":
                with self._lock:  # tools of one turn run in parallel threads
                    self.hits += 1
                return self._replay(hit)
            if self.mode == "replay":
                with self._lock:
                    self.misses.append(f"{tool.name}({key[:12]})")
                raise ToolError(f"tool cache miss for {tool.name} (key {key[:12]}); record the run first")
            return self._record(tool, args, ctx, key)

        return cached

    def _record(self, tool: Tool, args: BaseModel, ctx: ToolContext, key: str) -> ToolOutput:
        entry = CachedCall(
            key=key, tool=tool.name, version=tool.manifest.version, arguments=args.model_dump(mode="json"),
            input_images=[img.sha256 for img in ctx.images],
        )
        try:
            out = tool.fn(args, ctx)
        except ToolError as e:
            entry.error, entry.error_kind = str(e), e.kind
            self._append(entry)
            raise
        except Exception as e:
            # Replayed as the message the runner would have built, so the observation is identical.
            entry.error, entry.error_kind = f"{tool.name} failed: {type(e).__name__}: {e}", "exception"
            self._append(entry)
            raise
        if isinstance(out, ToolOutput):
            entry.text, entry.metrics = out.text, dict(out.metrics)
            for img in out.images:
                sha = self.images.put_image(img.image)
                entry.images.append(_Image(sha256=sha, parent=img.parent, box=img.box))
            self._append(entry)
        return out

    def _replay(self, call: CachedCall) -> ToolOutput:
        if call.error is not None:
            raise ToolError(call.error, kind=call.error_kind or "exception")
        images = [ToolImage(image=self.images.load(i.sha256), parent=i.parent, box=i.box) for i in call.images]
        return ToolOutput(text=call.text, images=images, metrics=dict(call.metrics))

    def _append(self, entry: CachedCall) -> None:
        with self._lock:
            if self._fd < 0:
                self.path.mkdir(parents=True, exist_ok=True)
                _jsonl.cut_torn_tail(self.path / CALLS)
                self._fd = _jsonl.open_append(self.path / CALLS)
            _jsonl.append_line(self._fd, _jsonl.dumps_line(entry))
            self._calls[entry.key] = entry
            self.recorded += 1
