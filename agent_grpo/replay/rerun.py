"""`replay rerun`: execute the recorded tool calls again on the stored images and compare.

A determinism check for environments and tool plugins. For each trajectory, turn by turn, the
tool context is rebuilt as the environment had it when the turn's calls ran: the images shown so
far (pixels from the run's PNG store), the budget spent, and the per-trajectory tool state carried
from earlier turns. The calls of a turn run together through `run_tool_calls`, as in the
environment. Compared: for successful calls, the text, the images (pixel sha256 after the same
RGB conversion and size cap the environment applies), their parent and box; for failed calls, the
error kind and message. Budget refusals and time-outs depend on the run, not the tool: skipped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agent_grpo.budget import BudgetUsage, VisualBudget
from agent_grpo.content import ImagePart, TextPart
from agent_grpo.images import MAX_STORED_PIXELS, fit_pixels, image_sha256, to_rgb
from agent_grpo.tools.api import ToolContext
from agent_grpo.tools.registry import ToolRegistry
from agent_grpo.tools.runner import DEFAULT_TIMEOUT_S, ToolJob, ToolRun, run_tool_calls
from agent_grpo.trajectory import ToolErrorKind, ToolResult, Trajectory

_NOT_REPRODUCIBLE = {ToolErrorKind.BUDGET, ToolErrorKind.TIMEOUT}


@dataclass(frozen=True)
class CallDiff:
    trajectory: str
    turn: int
    call_id: str
    tool: str
    what: str  # "text", "error", "images", "image 0 sha256", ...
    recorded: Any
    rerun: Any


@dataclass
class RerunReport:
    checked: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> calls
    diffs: list[CallDiff] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.diffs

    def merge(self, other: RerunReport) -> None:
        self.checked += other.checked
        self.skipped.update(other.skipped)
        self.diffs.extend(other.diffs)


def rerun_trajectory(traj: Trajectory, tools: ToolRegistry, budget: VisualBudget, timeout_s: float = DEFAULT_TIMEOUT_S) -> RerunReport:
    """Re-execute the tool calls of one trajectory whose image pixels are attached."""
    report = RerunReport()
    shown: list[ImagePart] = [img for img in traj.images if img.source == "task"]
    states: dict[str, dict[str, Any]] = {}
    for turn in traj.turns:
        if not turn.results:
            continue
        if not all(img.has_pixels for img in shown):
            report.skipped["images not stored"] += len(turn.results)
            break
        usage = BudgetUsage(turns=turn.index + 1, images=len(shown),
                            visual_tokens=sum(budget.tokens_for(i.width, i.height, i.source) for i in shown))
        calls = [c for c in turn.tool_calls if any(r.call_id == c.id for r in turn.results)]
        jobs = [ToolJob(call=c, context=ToolContext(images=list(shown), budget=budget, usage=usage.model_copy()),
                        states=states) for c in calls]
        runs = {run.call.id: run for run in run_tool_calls(jobs, tools, timeout_s)}
        for result in turn.results:
            if result.error_kind in _NOT_REPRODUCIBLE:
                report.skipped[str(result.error_kind)] += 1
            else:
                report.checked += 1
                report.diffs += [CallDiff(traj.id, turn.index, result.call_id, result.name, what, a, b)
                                 for what, a, b in _compare(result, runs[result.call_id])]
            shown.extend(result.images)  # the next turn sees them, as it did in the run
    return report


def rerun(trajectories: Iterable[Trajectory], tools: ToolRegistry, budget: VisualBudget, timeout_s: float = DEFAULT_TIMEOUT_S) -> RerunReport:
    total = RerunReport()
    for traj in trajectories:
        total.merge(rerun_trajectory(traj, tools, budget, timeout_s))
    return total


def _compare(recorded: ToolResult, run: ToolRun) -> list[tuple[str, Any, Any]]:
    """(what, recorded, rerun) for every difference between a recorded result and a new run."""
    if not recorded.ok or run.output is None:
        mine = (str(recorded.error_kind), recorded.error) if not recorded.ok else ("ok", None)
        theirs = (str(run.kind), run.error) if run.output is None else ("ok", None)
        return [] if mine == theirs else [("error", mine, theirs)]
    diffs = []
    text = next((p.text for p in recorded.content if isinstance(p, TextPart)), None)
    if (run.output.text or None) != text:
        diffs.append(("text", text, run.output.text))
    if recorded.metrics != run.output.metrics:
        diffs.append(("metrics", recorded.metrics, run.output.metrics))
    old, new = recorded.images, run.output.images
    if len(old) != len(new):
        return [*diffs, ("images", len(old), len(new))]
    for i, (a, b) in enumerate(zip(old, new, strict=True)):
        sha = image_sha256(fit_pixels(to_rgb(b.image), MAX_STORED_PIXELS))  # as Environment stores it
        for what, x, y in (("sha256", a.sha256, sha), ("parent", a.parent, b.parent), ("box", a.box, b.box)):
            if x != y:
                diffs.append((f"image {i} {what}", x, y))
    return diffs
