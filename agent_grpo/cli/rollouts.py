"""`agent-grpo rollouts`: look at an environment's trajectories without training anything.

Rollouts of any installed environment (default: the one training configs default to, `env.name`)
through the real pipeline (chat template, token-exact driver, tools, rubric, run store), with either
the environment's scripted policy (its package's `scripted_turns`, deliberately imperfect below
quality 1) or the tiny offline Qwen2.5-VL. Prints what happened and writes a replayable run with an
HTML report of the image chains.

`--out` is replaced only when agent-grpo wrote it (it carries `_outputs.MARKER`); any other existing,
non-empty folder is refused, so `--out .` can never delete a repository.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from agent_grpo.cli._console import make_console
from agent_grpo.cli._outputs import MARKER, check_replaceable, replace
from agent_grpo.errors import ConfigError

__all__ = ["MARKER", "rollouts"]


def rollouts(
    out: Path = typer.Option(Path("runs/rollouts"), "--out", help="run directory (an earlier rollouts run there is replaced)"),
    env_name: str = typer.Option(None, "--env", help="installed environment (default: the one the `default` demo trains on)"),
    split: str = typer.Option("test", help="task split"),
    policy: str = typer.Option("scripted", help="'scripted' (the env's noisy scripted policy) or 'tiny' (random tiny Qwen2.5-VL)"),
    n: int = typer.Option(8, "--n", min=1, help="tasks"),
    group_size: int = typer.Option(4, "--group-size", min=1, help="trajectories per task"),
    quality: float = typer.Option(0.7, min=0.0, max=1.0, help="scripted policy: 1 = always right, 0 = random"),
    seed: int = typer.Option(0, min=0, help="task and policy seed"),
) -> None:
    """Roll out an environment and save every trajectory for `agent-grpo replay`."""
    import numpy as np
    import torch

    from agent_grpo.envs.registry import make_env
    from agent_grpo.models.chat import ChatFormat
    from agent_grpo.models.tiny import build_tiny_model
    from agent_grpo.recipes.demos import default_env_name
    from agent_grpo.replay.html import write_report
    from agent_grpo.rollout import HFEngine, RolloutConfig, RolloutDriver, SamplingParams, ScriptedEngine
    from agent_grpo.store import RunMeta, RunStore
    from agent_grpo.store.record import correctness
    from agent_grpo.train.advantages import scored_advantages
    from agent_grpo.train.sft_data import scripted_policy

    if policy not in ("scripted", "tiny"):
        raise typer.BadParameter("use 'scripted' or 'tiny'", param_hint="--policy")
    check_replaceable(out)  # before any work: a refused --out costs nothing
    console = make_console()
    torch.set_num_threads(1)
    env_name = env_name or default_env_name()
    env = make_env(env_name)  # an unknown name is a PluginError: a message (cli/main.py)
    try:
        if split not in env.splits:
            raise typer.BadParameter(f"{env_name} has no split {split!r}; its splits: {', '.join(env.splits)}",
                                     param_hint="--split")
        tasks = list(env.load_tasks(split, n=n, seed=seed))
        model, processor = build_tiny_model(seed=seed)
        chat = ChatFormat(processor)
        if policy == "scripted":
            try:
                turns_of = scripted_policy(env, None)
            except ValueError as e:
                raise ConfigError(f"{env_name} has no scripted policy (its package defines no scripted_turns); "
                                  "roll out with --policy tiny") from e
            by_task = {t.id: t for t in tasks}
            plans: dict[str, list[str]] = {}

            def script(request) -> str:
                if request.key not in plans:  # one noisy plan per trajectory, seeded by its id
                    group, _, k = request.key.rpartition("-")
                    rng = np.random.default_rng([seed, int(k), sum(map(ord, group))])
                    plans[request.key] = turns_of(by_task[group], quality=quality, rng=rng)
                turns = plans[request.key]
                return turns[min(request.turn, len(turns) - 1)]

            engine = ScriptedEngine(script, chat)
        else:
            engine = HFEngine(model.eval(), chat)
        config = RolloutConfig(group_size=group_size, max_total_tokens=1024, sampling=SamplingParams(max_new_tokens=96))
        # Not a training step: stored with step None.
        trajs = RolloutDriver(env, engine, chat, config).rollout(tasks, step=None, seed=seed, tag="")
        # The advantages GRPO would train on (shown in the report); nothing is trained here.
        advantages = scored_advantages(trajs, [t.group_id for t in trajs], scale="group")
        for t, a in zip(trajs, advantages, strict=True):
            t.advantage = a

        replace(out, "rollouts")  # checked again: something may have appeared there meanwhile
        meta = RunMeta.from_env(env, recipe="rollouts", policy=policy, seed=seed)
        with RunStore.create(out, meta=meta) as store:
            store.extend(trajs)
            report = write_report(store, store.rows, out / "report.html",
                                  title=f"agent-grpo rollouts ({env_name}, {policy} policy)")
    finally:
        env.shutdown()

    table = Table(title=f"{env_name}, {policy} policy: {len(tasks)} tasks x {group_size}")
    for col in ("trajectory", "answer", "reference", "reward", "tool calls", "ended"):
        table.add_column(col)
    for t in trajs:
        table.add_row(escape(t.id), escape(str(t.answer)), escape(str(t.task.answer)), f"{t.reward:.2f}",
                      str(t.num_tool_calls), t.termination.value if t.termination else "-")
    console.print(table)
    judged = [c for c in map(correctness, trajs) if c is not None]
    acc = f"accuracy {sum(judged) / len(judged):.1%}, " if judged else ""
    calls = sum(t.num_tool_calls for t in trajs) / len(trajs)
    console.print(f"{acc}{calls:.2f} tool calls per trajectory, mean reward {sum(t.reward for t in trajs) / len(trajs):.3f}",
                  markup=False)
    console.print(f"run: {out}  (agent-grpo replay list {out})\nreport: {report}", markup=False)

