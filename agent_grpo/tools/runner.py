"""Running tool calls: every failure becomes a `ToolRun` with an error for the model, never an exception.

Calls run concurrently in tool worker processes (`agent_grpo.tools.isolation`): a call that hangs,
holds the GIL or calls `sys.exit` costs at most its own time-out, counted from when it starts running.
Every result passes `check_output` (images a model can be shown, parents that exist) in the parent.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from agent_grpo.errors import ToolError
from agent_grpo.tools.api import ToolContext, ToolOutput, check_output
from agent_grpo.tools.isolation import ToolWorkers
from agent_grpo.tools.registry import ToolRegistry
from agent_grpo.trajectory import ToolCall, ToolErrorKind

DEFAULT_TIMEOUT_S = 10.0


@dataclass
class ToolJob:
    """One call to run, with the context of the trajectory that made it."""

    call: ToolCall
    context: ToolContext
    states: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-tool state of that trajectory


@dataclass
class ToolRun:
    call: ToolCall
    output: ToolOutput | None = None
    error: str | None = None
    kind: ToolErrorKind | None = None
    duration_s: float = 0.0


def describe_validation_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(x) for x in err["loc"]) or "arguments"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def _prepare(job: ToolJob, registry: ToolRegistry):
    """Validate a call before running it. Returns (tool, args, ctx) or a finished ToolRun."""
    call = job.call
    if call.parse_error is not None:
        return ToolRun(call, error=f"could not parse the tool call: {call.parse_error}", kind=ToolErrorKind.PARSE)
    tool = registry.get(call.name)
    if tool is None:
        return ToolRun(
            call,
            error=f"unknown tool {call.name!r}; available tools: {', '.join(registry.names)}",
            kind=ToolErrorKind.UNKNOWN_TOOL,
        )
    try:
        args = tool.arguments.model_validate(call.arguments)
    except ValidationError as e:
        return ToolRun(
            call, error=f"invalid arguments for {tool.name}: {describe_validation_error(e)}", kind=ToolErrorKind.INVALID_ARGUMENTS
        )
    ctx = job.context
    if tool.manifest.returns_images and ctx.usage.images_left(ctx.budget) <= 0:
        return ToolRun(
            call,
            error=f"image budget exhausted ({ctx.budget.max_images} images); answer with what you have seen",
            kind=ToolErrorKind.BUDGET,
        )
    state = job.states.setdefault(tool.name, {})
    ctx = replace(ctx, state=state, box_frame=tool.manifest.box_frame or ctx.box_frame)
    return tool, args, ctx


_default_workers: ToolWorkers | None = None
_default_lock = threading.Lock()


def default_workers() -> ToolWorkers:
    """The process-wide pool used when `run_tool_calls` is given none (started on first use)."""
    global _default_workers
    with _default_lock:
        if _default_workers is None:
            _default_workers = ToolWorkers()
        return _default_workers


def _kind(kind: str | None) -> ToolErrorKind:
    return ToolErrorKind(kind) if kind in ToolErrorKind._value2member_map_ else ToolErrorKind.EXCEPTION


def run_tool_calls(
    jobs: list[ToolJob],
    registry: ToolRegistry,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    pool: ToolWorkers | None = None,
) -> list[ToolRun]:
    """Run calls concurrently; results come back in the order of `jobs`."""
    prepared = [_prepare(job, registry) for job in jobs]
    runnable = [i for i, p in enumerate(prepared) if not isinstance(p, ToolRun)]
    results: list[ToolRun | None] = [p if isinstance(p, ToolRun) else None for p in prepared]
    if not runnable:
        return results  # type: ignore[return-value]
    workers = pool or default_workers()
    calls = []
    for i in runnable:
        tool, _args, ctx = prepared[i]
        calls.append((tool, jobs[i].call.arguments, ctx, tool.manifest.timeout_s or timeout_s))
    for i, reply in zip(runnable, workers.run(calls), strict=True):
        tool, _args, ctx = prepared[i]
        call = jobs[i].call
        if reply.error is not None:
            results[i] = ToolRun(call, error=reply.error, kind=_kind(reply.kind), duration_s=reply.duration_s)
            continue
        try:  # checked again here, in the parent: a worker's reply is not trusted
            output = check_output(reply.output, tool.name, len(ctx.images))
        except ToolError as e:
            results[i] = ToolRun(call, error=str(e), kind=_kind(e.kind), duration_s=reply.duration_s)
            continue
        if isinstance(reply.state, dict) and reply.state is not ctx.state:
            ctx.state.clear()
            ctx.state.update(reply.state)
        results[i] = ToolRun(call, output=output, duration_s=reply.duration_s)
    return results  # type: ignore[return-value]
