"""Evaluation of a policy on an environment split, and the results tables every report shares.

Accuracy is the `accuracy` reward component (>= 0.5 counts as correct). With k samples per task,
`avg@k` is the mean accuracy over all k x n trajectories and `pass@k` the share of tasks with at
least one correct sample; the 95% interval is Wilson's, over tasks (k = 1) or trajectories. Where the
environment's protocol averages over groups (`EvalProtocol.average_over`, HR-Bench's cycles), the
headline and per-category accuracies are the mean of the groups' accuracies, and `sample_accuracy`
keeps the plain mean.

Which extra columns a report shows is the environment's choice (`Environment.eval_protocol`); this
module names none. Categories come from `task.metadata[protocol.category_key]`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from pydantic import BaseModel, Field

from agent_grpo.envs.api import Environment, EvalProtocol
from agent_grpo.trajectory import Trajectory


class CategoryResult(BaseModel):
    category: str
    tasks: int
    trajectories: int
    accuracy: float = Field(description="avg@k in this category (group-averaged where the protocol says so)")
    pass_at_k: float


class ToolUse(BaseModel):
    calls_per_traj: float
    with_call: float = Field(description="share of trajectories with at least one tool call")
    failed_per_traj: float
    failed_share: float = Field(description="failed calls / calls (0 without calls)")
    errors: dict[str, int] = Field(default_factory=dict, description="failed calls by kind (parse, timeout, ...)")


class EvalResult(BaseModel):
    name: str = Field(description="what was evaluated, e.g. 'after SFT'")
    env: str
    split: str
    tasks: int
    k: int
    accuracy: float  # avg@k, or the protocol's group average
    ci_low: float
    ci_high: float
    pass_at_k: float
    sample_accuracy: float | None = Field(default=None, description="plain mean over trajectories")
    calls_per_traj: float
    tool_use: ToolUse | None = None
    metrics: dict[str, float | None] = Field(default_factory=dict, description="the environment's columns, by metric")
    labels: dict[str, str] = Field(default_factory=dict, description="metric -> column header, in table order")
    categories: list[CategoryResult] = Field(default_factory=list)
    protocol: str = ""
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


def _correct(t: Trajectory) -> bool:
    return t.rewards.get("accuracy", 0.0) >= 0.5


def _accuracy(trajs: list[Trajectory], average_over: str | None) -> float:
    """Mean correctness, or the mean over `metadata[average_over]` groups of each group's mean."""
    if average_over is None:
        return sum(map(_correct, trajs)) / len(trajs)
    groups: dict[str, list[bool]] = {}
    for t in trajs:
        groups.setdefault(str(t.task.metadata.get(average_over)), []).append(_correct(t))
    return sum(sum(g) / len(g) for g in groups.values()) / len(groups)


def _pass_at_k(trajs: list[Trajectory]) -> tuple[int, float]:
    groups: dict[str, list[bool]] = {}
    for t in trajs:
        groups.setdefault(t.group_id, []).append(_correct(t))
    return len(groups), sum(any(g) for g in groups.values()) / len(groups)


def tool_use(trajs: list[Trajectory]) -> ToolUse:
    calls = sum(t.num_tool_calls for t in trajs)
    failed = [r for t in trajs for r in t.tool_results if not r.ok]
    kinds = Counter(r.error_kind.value if r.error_kind else "other" for r in failed)
    return ToolUse(
        calls_per_traj=calls / len(trajs), with_call=sum(t.num_tool_calls > 0 for t in trajs) / len(trajs),
        failed_per_traj=len(failed) / len(trajs), failed_share=len(failed) / calls if calls else 0.0,
        errors=dict(sorted(kinds.items())),
    )


def summarize(
    name: str, env: str, split: str, trajs: list[Trajectory], k: int, protocol: EvalProtocol | None = None
) -> EvalResult:
    if not trajs:
        raise ValueError(f"no trajectories to summarize for {name!r} on {env}/{split}")
    protocol = protocol or EvalProtocol()
    correct = [_correct(t) for t in trajs]
    lo, hi = wilson(sum(correct), len(trajs))
    tasks, pass_k = _pass_at_k(trajs)
    ends = Counter(t.termination.value if t.termination else "none" for t in trajs)
    metrics = {}
    for col in protocol.columns:
        pool = [t for t in trajs if t.num_tool_calls] if col.tool_users_only else trajs
        metrics[col.metric] = _mean([t.metrics[col.metric] for t in pool if col.metric in t.metrics])
    return EvalResult(
        name=name, env=env, split=split, tasks=tasks, k=k, accuracy=_accuracy(trajs, protocol.average_over),
        ci_low=lo, ci_high=hi, pass_at_k=pass_k, sample_accuracy=sum(correct) / len(trajs),
        calls_per_traj=sum(t.num_tool_calls for t in trajs) / len(trajs), tool_use=tool_use(trajs),
        metrics=metrics, labels={c.metric: c.label for c in protocol.columns},
        categories=_categories(trajs, protocol), protocol=protocol.description,
        mean_reward=sum(t.reward for t in trajs) / len(trajs),
        terminations={r: c / len(trajs) for r, c in sorted(ends.items())},
    )


def _categories(trajs: list[Trajectory], protocol: EvalProtocol) -> list[CategoryResult]:
    by: dict[str, list[Trajectory]] = {}
    for t in trajs:
        value = t.task.metadata.get(protocol.category_key)
        if value is not None:
            by.setdefault(str(value), []).append(t)
    out = []
    for category, members in sorted(by.items()):
        tasks, pass_k = _pass_at_k(members)
        out.append(CategoryResult(category=category, tasks=tasks, trajectories=len(members),
                                  accuracy=_accuracy(members, protocol.average_over), pass_at_k=pass_k))
    return out


def evaluate_engine(
    engine, chat, env: Environment, *, name: str = "policy", split: str = "test", n: int | None = 200, k: int = 1,
    seed: int = 0, max_new_tokens: int = 96, max_total_tokens: int = 1024, batch_size: int = 64,
) -> tuple[EvalResult, list[Trajectory]]:
    """Roll out `n` tasks (all with None) k times each with any engine; greedy for k = 1, temperature 1 for k > 1."""
    from agent_grpo.rollout import RolloutConfig, RolloutDriver, SamplingParams

    tasks = list(env.load_tasks(split, n=n, seed=seed))
    if not tasks:
        raise ValueError(f"{env.name} has no tasks in split {split!r}")
    sampling = SamplingParams(max_new_tokens=max_new_tokens, greedy=k == 1, seed=seed)
    config = RolloutConfig(group_size=k, max_total_tokens=max_total_tokens, max_batch_size=batch_size, sampling=sampling)
    trajs = RolloutDriver(env, engine, chat, config).rollout(tasks, seed=seed, tag=f"eval-{name}-")
    return summarize(name, env.name, split, trajs, k, env.eval_protocol()), trajs


def evaluate_policy(
    model, chat, env: Environment, *, name: str = "policy", split: str = "test", n: int | None = 200, k: int = 1,
    seed: int = 0, max_new_tokens: int = 96, max_total_tokens: int = 1024, batch_size: int = 64,
    image_cache_mb: float | None = None,
) -> tuple[EvalResult, list[Trajectory]]:
    """`evaluate_engine` with a transformers model (generation through `HFEngine`). `image_cache_mb`: the
    engine's preprocessed-image cache (default: `memory.engine_image_cache_mb`'s default)."""
    from agent_grpo.rollout import HFEngine
    from agent_grpo.train.config import MemoryConfig

    if image_cache_mb is None:
        image_cache_mb = MemoryConfig().engine_image_cache_mb
    return evaluate_engine(
        HFEngine(model.eval(), chat, image_cache_mb=image_cache_mb), chat, env, name=name, split=split, n=n, k=k, seed=seed,
        max_new_tokens=max_new_tokens, max_total_tokens=max_total_tokens, batch_size=batch_size,
    )


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def results_table(results: list[EvalResult]) -> str:
    """Markdown table: one row per evaluated policy; the environments' own columns after the shared ones."""
    labels: dict[str, str] = {}
    for r in results:
        labels.update({m: lab for m, lab in r.labels.items() if m not in labels})
    head = ["policy", "accuracy (95% CI)", "pass@k", "tool calls / traj", "with a call", "failed calls",
            *labels.values(), "answered", "tasks x k"]
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in results:
        tools = r.tool_use
        cells = [
            r.name, f"{r.accuracy:.1%} ({r.ci_low:.1%}-{r.ci_high:.1%})", f"{r.pass_at_k:.1%}", f"{r.calls_per_traj:.2f}",
            f"{tools.with_call:.0%}" if tools else "-", f"{tools.failed_share:.0%}" if tools else "-",
            *(_cell(r.metrics.get(m)) for m in labels),
            f"{r.terminations.get('answered', 0.0):.0%}", f"{r.tasks} x {r.k}",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def category_table(result: EvalResult) -> str:
    """Markdown table of one result's accuracy per category, then overall ('' without categories)."""
    if not result.categories:
        return ""
    rows = [f"{result.name} on {result.env}/{result.split}, by category:", "",
            "| category | tasks | trajectories | accuracy | pass@k |", "| --- | --- | --- | --- | --- |"]
    for c in result.categories:
        rows.append(f"| {c.category} | {c.tasks} | {c.trajectories} | {c.accuracy:.1%} | {c.pass_at_k:.1%} |")
    rows.append(f"| overall | {result.tasks} | {result.tasks * result.k} | {result.accuracy:.1%} | {result.pass_at_k:.1%} |")
    return "\n".join(rows)


def results_markdown(results: list[EvalResult]) -> str:
    """The results table, then each result's per-category table and its protocol."""
    parts = [results_table(results)]
    for r in results:
        if table := category_table(r):
            parts.append(table)
        if r.protocol:
            parts.append(f"Protocol ({r.env}): {r.protocol}")
    return "\n\n".join(parts)


def write_results(results: list[EvalResult], out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps([r.model_dump() for r in results], indent=2))
    path = out_dir / "results.md"
    path.write_text(results_markdown(results) + "\n")
    return path
