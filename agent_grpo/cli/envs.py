"""`agent-grpo envs ...`: installed environments and sample tasks rendered to PNG."""

from __future__ import annotations

import re
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from agent_grpo.cli._console import make_console
from agent_grpo.envs.registry import load_envs, make_env

envs_app = typer.Typer(help="Inspect installed environments (entry-point group agent_grpo.envs).", no_args_is_help=True)


@envs_app.command("list")
def list_envs() -> None:
    """List installed environments with their package, tools, splits and budget."""
    console = make_console()
    envs = load_envs()
    table = Table(title=f"{len(envs)} environments installed")
    for col in ("name", "package", "tools", "splits", "description"):
        table.add_column(col)
    for name, entry in sorted(envs.items()):
        cls = entry.factory
        table.add_row(name, entry.source, ", ".join(cls.tool_names), ", ".join(cls.splits), escape(cls.description))
    console.print(table)


@envs_app.command("show")
def show_env(
    env: str = typer.Argument(..., help="environment name, see `agent-grpo envs list`"),
    n: int = typer.Option(4, "--n", min=1, help="number of tasks to render"),
    out: Path = typer.Option(Path("env_samples"), "--out", help="folder for the PNG files"),
    split: str = typer.Option("test", help="task split"),
    seed: int = typer.Option(0, help="task seed"),
) -> None:
    """Render N sample tasks of ENV to PNG files in OUT and print what was written."""
    from agent_grpo.cli._config import check_out_dir

    console = make_console()
    check_out_dir(out, "--out")
    environment = make_env(env)  # an unknown name is a PluginError: a message (cli/main.py)
    if split not in environment.splits:
        environment.shutdown()
        raise typer.BadParameter(f"split {split!r} not in {environment.splits}", param_hint="--split")
    out.mkdir(parents=True, exist_ok=True)
    table = Table(title=f"{env}: {n} {split} tasks -> {out}")
    for col in ("task", "question", "answer", "file", "size"):
        table.add_column(col)
    for task in environment.load_tasks(split, n=n, seed=seed):
        for label, picture in environment.render_sample(task):
            safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{task.id}_{label}")  # ids may hold '/' or spaces
            path = out / f"{safe}.png"
            picture.save(path)
            table.add_row(
                escape(task.id), escape(task.question), escape(str(task.answer)), path.name,
                f"{picture.width}x{picture.height}",
            )
    environment.shutdown()
    console.print(table)
