"""Training metrics: what a step's trajectories did, written to JSONL and TensorBoard, plus warnings.

`metrics.jsonl` has one line per step (step, wall time, every metric); it is the source for plots
and for `agent-grpo replay diff`. Warnings flag runs that look unstable before they waste hours.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections import Counter
from pathlib import Path

from agent_grpo.trajectory import Trajectory

# Flags the rollout driver sets only on the trajectories they happen to: a rate over all trajectories.
EVENT_FLAGS = ("prompt_too_long", "template_mismatch", "context_overflow", "reward_errors")


def trajectory_metrics(trajs: list[Trajectory], prefix: str = "") -> dict[str, float]:
    """Means over a step's trajectories: rewards by component, tool use, terminations, and every numeric
    trajectory metric (the driver's lengths and times, the environment's `on_finish` metrics, the rubric's
    metrics such as reward-hacking indicators) under its own name, plus each tool's own metrics.

    A trajectory metric is averaged over the trajectories that report it (an environment may leave out a
    zoom precision where nothing was zoomed); NaN and inf values are left out; `EVENT_FLAGS` count as 0
    where absent."""
    if not trajs:
        return {}
    n = len(trajs)
    out: dict[str, float] = {"reward": sum(t.reward for t in trajs) / n}
    for name in sorted({k for t in trajs for k in t.rewards}):
        out[f"reward/{name}"] = sum(t.rewards.get(name, 0.0) for t in trajs) / n
    calls = [t.num_tool_calls for t in trajs]
    failed = sum(t.num_failed_calls for t in trajs)
    out["tool_calls_per_traj"] = sum(calls) / n
    out["tool_failure_rate"] = failed / sum(calls) if sum(calls) else 0.0
    out["tool_use_rate"] = sum(1 for c in calls if c) / n
    values: dict[str, list[float]] = {}
    for t in trajs:
        for key, value in t.metrics.items():
            _collect(values, key, value)
        for result in t.tool_results:
            for key, value in result.metrics.items():
                _collect(values, f"tool/{result.name}/{key}", value)
    for key in sorted(values):
        if key not in out:  # a metric named like a built-in one never replaces it
            total = n if key in EVENT_FLAGS else len(values[key])
            out[key] = sum(values[key]) / total
    for reason, count in Counter(t.termination.value if t.termination else "none" for t in trajs).items():
        out[f"termination/{reason}"] = count / n
    return {f"{prefix}{k}": float(v) for k, v in out.items()}


def _collect(values: dict[str, list[float]], key: str, value) -> None:
    if isinstance(value, bool | int | float) and math.isfinite(value):
        values.setdefault(key, []).append(float(value))


class MetricsLogger:
    """Appends one JSON line per step; mirrors scalars to TensorBoard (and W&B when asked)."""

    def __init__(self, out_dir: Path, tensorboard: bool = True, wandb: bool = False, run_name: str | None = None):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.start = time.time()
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
        self.wandb = None
        if wandb:
            try:
                import wandb as wb
            except ImportError as e:
                raise ImportError("wandb: true needs `pip install wandb`") from e
            self.wandb = wb.init(project="agent-grpo", name=run_name, dir=str(out_dir))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, "time_s": round(time.time() - self.start, 3), **metrics}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        if self.tb is not None:
            for key, value in metrics.items():
                self.tb.add_scalar(key, value, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(path: Path) -> list[dict]:
    """Rows of a metrics.jsonl; a torn last line (killed mid-write) is skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class InstabilityMonitor:
    """Flags runs that look unstable: one warning per event, returned for the caller to show.

    An event starts on the step a condition first holds and lasts while it keeps holding; it is reported
    on its first step only, and again only after the condition has cleared and come back. The monitor
    only returns its warnings (the recipe prints them), so each event is reported exactly once.
    """

    def __init__(self, patience: int = 5, kl_limit: float = 1.0, grad_factor: float = 10.0):
        self.patience = patience
        self.kl_limit = kl_limit
        self.grad_factor = grad_factor
        self.history: list[dict[str, float]] = []
        self.active: set[str] = set()  # kinds of the events going on at the last step

    def check(self, metrics: dict[str, float]) -> list[str]:
        """Add a step's metrics; returns the warnings of the events that start at this step."""
        self.history.append(metrics)
        found: dict[str, str] = {}  # kind -> message
        recent = self.history[-self.patience :]
        calls = [m.get("tool_calls_per_traj", 0.0) for m in self.history]
        if len(calls) > self.patience and max(calls[: -self.patience]) > 0.5:
            if all(m.get("tool_calls_per_traj", 0.0) < 0.1 * max(calls) for m in recent):
                found["tool_collapse"] = "tool use collapsed: calls per trajectory fell below 10% of their peak"
        if metrics.get("kl", 0.0) > self.kl_limit:
            found["kl"] = f"KL to the reference is {metrics['kl']:.3g} (> {self.kl_limit}); lower lr or raise beta"
        norm = metrics.get("grad_norm")
        # A step without learning signal (every advantage 0) has grad norm 0: it says nothing about the
        # usual scale, and a median of 0 would make every later step look like a spike.
        norms = [m["grad_norm"] for m in self.history[:-1] if 0.0 < m.get("grad_norm", 0.0) < math.inf]
        if norm is not None and not math.isfinite(norm):
            found["grad_norm"] = f"grad norm is {norm}: the update diverged; lower lr"
        elif norm is not None and len(norms) >= 3 and norm > self.grad_factor * statistics.median(norms):
            found["grad_norm"] = f"grad norm {norm:.3g} is over {self.grad_factor}x its median"
        gaps = [m["gap/kl"] for m in self.history[:-1] if "gap/kl" in m]
        if len(gaps) >= 3 and metrics.get("gap/kl", 0.0) > max(self.grad_factor * statistics.median(gaps), 1e-3):
            found["gap"] = (f"train/inference gap: KL(engine || trainer) {metrics['gap/kl']:.3g} is over "
                            f"{self.grad_factor}x its median; check the engine's weight sync and dtype")
        if len(recent) == self.patience and all(m.get("zero_variance_groups", 0.0) >= 1.0 for m in recent):
            found["no_signal"] = f"every group had identical rewards for {self.patience} steps: no learning signal"
        new = [message for kind, message in found.items() if kind not in self.active]
        self.active = set(found)
        return new
