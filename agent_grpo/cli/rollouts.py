"""`agent-grpo rollouts`: look at the embedded default's trajectories without training anything.

Rollouts of `visual-search` through the real pipeline (chat template, token-exact driver, tools,
rubric, run store), with either a scripted policy (deliberately imperfect: noisy boxes, some wrong
answers) or the tiny offline Qwen2.5-VL. Prints what happened and writes a replayable run with an
HTML report of the image chains.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from agent_grpo.cli._console import make_console


def rollouts(
    out: Path = typer.Option(Path("runs/rollouts"), "--out", help="run directory (replace it if it exists)"),
    policy: str = typer.Option("scripted", help="'scripted' (noisy oracle) or 'tiny' (random tiny Qwen2.5-VL)"),
    n: int = typer.Option(8, "--n", min=1, help="tasks"),
    group_size: int = typer.Option(4, "--group-size", min=1, help="trajectories per task"),
    quality: float = typer.Option(0.7, min=0.0, max=1.0, help="scripted policy: 1 = always right, 0 = random"),
    seed: int = typer.Option(0, help="task and policy seed"),
) -> None:
    """Run the embedded default (visual-search) and save every trajectory for `agent-grpo replay`."""
    import shutil

    import numpy as np
    import torch
    from agent_grpo_envs.visual_search.policy import scripted_turns

    from agent_grpo.envs.registry import make_env
    from agent_grpo.models.chat import ChatFormat
    from agent_grpo.models.tiny import build_tiny_model
    from agent_grpo.replay.html import write_report
    from agent_grpo.rollout import HFEngine, RolloutConfig, RolloutDriver, SamplingParams, ScriptedEngine
    from agent_grpo.store import RunMeta, RunStore
    from agent_grpo.train.advantages import group_advantages

    if policy not in ("scripted", "tiny"):
        raise typer.BadParameter("use 'scripted' or 'tiny'", param_hint="--policy")
    console = make_console()
    torch.set_num_threads(1)
    env = make_env("visual-search")
    tasks = list(env.load_tasks("test", n=n, seed=seed))
    model, processor = build_tiny_model(seed=seed)
    chat = ChatFormat(processor)
    if policy == "scripted":
        by_task = {t.id: t for t in tasks}
        plans: dict[str, list[str]] = {}

        def script(request) -> str:
            if request.key not in plans:  # one noisy plan per trajectory, seeded by its id
                group, _, k = request.key.rpartition("-")
                rng = np.random.default_rng([seed, int(k), sum(map(ord, group))])
                plans[request.key] = scripted_turns(by_task[group], quality=quality, rng=rng)
            turns = plans[request.key]
            return turns[min(request.turn, len(turns) - 1)]

        engine = ScriptedEngine(script, chat)
    else:
        engine = HFEngine(model.eval(), chat)
    config = RolloutConfig(group_size=group_size, max_total_tokens=1024, sampling=SamplingParams(max_new_tokens=96))
    trajs = RolloutDriver(env, engine, chat, config).rollout(tasks, step=0, seed=seed, tag="")
    # The advantages GRPO would train on (shown in the report); nothing is trained here.
    advantages = group_advantages([t.reward for t in trajs], [t.group_id for t in trajs], scale="group")
    for t, a in zip(trajs, advantages.tolist(), strict=True):
        t.advantage = a

    shutil.rmtree(out, ignore_errors=True)
    with RunStore.create(out, meta=RunMeta.from_env(env, recipe="rollouts", policy=policy, seed=seed)) as store:
        store.extend(trajs)
        report = write_report(store, store.rows, out / "report.html", title=f"agent-grpo rollouts ({policy} policy)")
    env.shutdown()

    table = Table(title=f"visual-search, {policy} policy: {len(tasks)} tasks x {group_size}")
    for col in ("trajectory", "answer", "reference", "reward", "zoom calls", "zoom IoU", "ended"):
        table.add_column(col)
    for t in trajs:
        table.add_row(t.id, str(t.answer), str(t.task.answer), f"{t.reward:.2f}", str(t.num_tool_calls),
                      f"{t.metrics.get('zoom_cell_iou', 0.0):.2f}", t.termination.value if t.termination else "-")
    console.print(table)
    acc = sum(t.rewards.get("accuracy", 0.0) for t in trajs) / len(trajs)
    calls = sum(t.num_tool_calls for t in trajs) / len(trajs)
    console.print(f"accuracy {acc:.1%}, {calls:.2f} zoom calls per trajectory, mean reward "
                  f"{sum(t.reward for t in trajs) / len(trajs):.3f}")
    console.print(f"run: {out}  (agent-grpo replay list {out})\nreport: {report}")
