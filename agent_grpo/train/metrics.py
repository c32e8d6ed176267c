"""Training metrics: what a step's trajectories did, written to JSONL and TensorBoard, plus warnings.

`metrics.jsonl` has one line per step (step, wall time, every metric); it is the source for plots
and for `agent-grpo replay diff`. Warnings flag runs that look unstable before they waste hours.
"""

from __future__ import annotations

import json
import math
import statistics
import time
import warnings
from collections import Counter
from pathlib import Path

from agent_grpo.trajectory import Trajectory


def trajectory_metrics(trajs: list[Trajectory], prefix: str = "") -> dict[str, float]:
    """Means over a step's trajectories: rewards by component, tool use, lengths, terminations, times."""
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
    for key in ("response_tokens", "turns", "zoom_precision", "zoom_cell_iou", "needless_zooms", "time_generation_s",
                "time_env_s"):
        values = [t.metrics[key] for t in trajs if key in t.metrics and math.isfinite(t.metrics[key])]
        if values:
            out[key] = sum(values) / len(values)
    for reason, count in Counter(t.termination.value if t.termination else "none" for t in trajs).items():
        out[f"termination/{reason}"] = count / n
    return {f"{prefix}{k}": float(v) for k, v in out.items()}


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
    """Warns (once per kind) when training looks unstable; returns the warnings it raised this step."""

    def __init__(self, patience: int = 5, kl_limit: float = 1.0, grad_factor: float = 10.0):
        self.patience = patience
        self.kl_limit = kl_limit
        self.grad_factor = grad_factor
        self.history: list[dict[str, float]] = []
        self.raised: set[str] = set()

    def check(self, metrics: dict[str, float]) -> list[str]:
        self.history.append(metrics)
        found = []
        recent = self.history[-self.patience :]
        calls = [m.get("tool_calls_per_traj", 0.0) for m in self.history]
        if len(calls) > self.patience and max(calls[: -self.patience]) > 0.5:
            if all(m.get("tool_calls_per_traj", 0.0) < 0.1 * max(calls) for m in recent):
                found.append("tool use collapsed: calls per trajectory fell below 10% of their peak")
        if metrics.get("kl", 0.0) > self.kl_limit:
            found.append(f"KL to the reference is {metrics['kl']:.3g} (> {self.kl_limit}); lower lr or raise beta")
        norms = [m["grad_norm"] for m in self.history[:-1] if "grad_norm" in m]
        if len(norms) >= 3 and metrics.get("grad_norm", 0.0) > self.grad_factor * statistics.median(norms):
            found.append(f"grad norm {metrics['grad_norm']:.3g} is over {self.grad_factor}x its median")
        gaps = [m["gap/kl"] for m in self.history[:-1] if "gap/kl" in m]
        if len(gaps) >= 3 and metrics.get("gap/kl", 0.0) > max(self.grad_factor * statistics.median(gaps), 1e-3):
            found.append(f"train/inference gap: KL(engine || trainer) {metrics['gap/kl']:.3g} is over "
                         f"{self.grad_factor}x its median; check the engine's weight sync and dtype")
        if len(recent) == self.patience and all(m.get("zero_variance_groups", 0.0) >= 1.0 for m in recent):
            found.append(f"every group had identical rewards for {self.patience} steps: no learning signal")
        new = [w for w in found if w.split(":")[0] not in self.raised]
        for w in new:
            self.raised.add(w.split(":")[0])
            warnings.warn(w, stacklevel=2)
        return found
