"""Evaluation of a policy on an environment split, and the results table every report shares.

Accuracy is the `accuracy` reward component (>= 0.5 counts as correct). With k samples per task,
`avg@k` is the mean accuracy over all k x n trajectories and `pass@k` the share of tasks with at
least one correct sample; the 95% interval is Wilson's, over tasks (k = 1) or trajectories.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from pydantic import BaseModel, Field

from agent_grpo.envs.api import Environment
from agent_grpo.rollout import HFEngine, RolloutConfig, RolloutDriver, SamplingParams
from agent_grpo.train.config import MemoryConfig
from agent_grpo.trajectory import Trajectory


class EvalResult(BaseModel):
    name: str = Field(description="what was evaluated, e.g. 'after SFT'")
    env: str
    split: str
    tasks: int
    k: int
    accuracy: float  # avg@k
    ci_low: float
    ci_high: float
    pass_at_k: float
    calls_per_traj: float
    zoom_precision: float | None = None
    zoom_cell_iou: float | None = None
    needless_zooms: float | None = Field(default=None, description="per trajectory, where the env measures it")
    mean_reward: float
    terminations: dict[str, float]


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(name: str, env: str, split: str, trajs: list[Trajectory], k: int) -> EvalResult:
    correct = [t.rewards.get("accuracy", 0.0) >= 0.5 for t in trajs]
    groups: dict[str, list[bool]] = {}
    for t, c in zip(trajs, correct, strict=True):
        groups.setdefault(t.group_id, []).append(c)
    acc = sum(correct) / len(trajs)
    lo, hi = wilson(sum(correct), len(trajs))
    ends = Counter(t.termination.value if t.termination else "none" for t in trajs)
    return EvalResult(
        name=name, env=env, split=split, tasks=len(groups), k=k, accuracy=acc, ci_low=lo, ci_high=hi,
        pass_at_k=sum(any(g) for g in groups.values()) / len(groups),
        calls_per_traj=sum(t.num_tool_calls for t in trajs) / len(trajs),
        zoom_precision=_mean([t.metrics["zoom_precision"] for t in trajs if t.num_tool_calls and "zoom_precision" in t.metrics]),
        zoom_cell_iou=_mean([t.metrics["zoom_cell_iou"] for t in trajs if t.num_tool_calls and "zoom_cell_iou" in t.metrics]),
        needless_zooms=_mean([t.metrics["needless_zooms"] for t in trajs if "needless_zooms" in t.metrics]),
        mean_reward=sum(t.reward for t in trajs) / len(trajs),
        terminations={r: c / len(trajs) for r, c in sorted(ends.items())},
    )


def evaluate_policy(
    model, chat, env: Environment, *, name: str = "policy", split: str = "test", n: int = 200, k: int = 1,
    seed: int = 0, max_new_tokens: int = 96, max_total_tokens: int = 1024, batch_size: int = 64,
    image_cache_mb: float | None = None,
) -> tuple[EvalResult, list[Trajectory]]:
    """Greedy for k = 1, temperature 1 sampling for k > 1. `image_cache_mb`: the engine's preprocessed-image
    cache (default: `memory.engine_image_cache_mb`'s default)."""
    if image_cache_mb is None:
        image_cache_mb = MemoryConfig().engine_image_cache_mb
    tasks = list(env.load_tasks(split, n=n, seed=seed))
    sampling = SamplingParams(max_new_tokens=max_new_tokens, greedy=k == 1, seed=seed)
    config = RolloutConfig(group_size=k, max_total_tokens=max_total_tokens, max_batch_size=batch_size, sampling=sampling)
    engine = HFEngine(model.eval(), chat, image_cache_mb=image_cache_mb)
    trajs = RolloutDriver(env, engine, chat, config).rollout(tasks, seed=seed, tag=f"eval-{name}-")
    return summarize(name, env.name, split, trajs, k), trajs


def results_table(results: list[EvalResult]) -> str:
    """Markdown table: one row per evaluated policy."""
    head = ("| policy | accuracy (95% CI) | pass@k | zoom calls / traj | needless zooms / traj | zoom IoU (cell) | "
            "answered | tasks x k |")
    rule = "| --- | --- | --- | --- | --- | --- | --- | --- |"
    rows = [head, rule]
    for r in results:
        iou = f"{r.zoom_cell_iou:.2f}" if r.zoom_cell_iou is not None else "-"
        needless = f"{r.needless_zooms:.2f}" if r.needless_zooms is not None else "-"
        rows.append(
            f"| {r.name} | {r.accuracy:.1%} ({r.ci_low:.1%}-{r.ci_high:.1%}) | {r.pass_at_k:.1%} | "
            f"{r.calls_per_traj:.2f} | {needless} | {iou} | {r.terminations.get('answered', 0.0):.0%} | {r.tasks} x {r.k} |"
        )
    return "\n".join(rows)


def write_results(results: list[EvalResult], out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps([r.model_dump() for r in results], indent=2))
    path = out_dir / "results.md"
    path.write_text(results_table(results) + "\n")
    return path
