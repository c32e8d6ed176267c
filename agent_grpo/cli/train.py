"""`agent-grpo train CONFIG.yaml`: validate everything, then run the GRPO recipe."""

from __future__ import annotations

from pathlib import Path

import typer

from agent_grpo.cli._console import make_console


def train(
    config: Path = typer.Argument(None, help="YAML config (see examples/configs/); omit for all defaults"),
    set_: list[str] = typer.Option([], "--set", "-s", help="override a field: --set rollout.group_size=4"),
    check: bool = typer.Option(False, "--check", help="validate the config and exit"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no live progress bar: a log line per step instead"),
    log_every: int = typer.Option(
        1, "--log-every", min=1, help="without a live bar (a pipe, a batch job, --no-progress): a line every N steps"
    ),
) -> None:
    """Train a policy with GRPO on an environment. The config is checked before any model is loaded."""
    from agent_grpo.cli._config import load_and_check, print_config
    from agent_grpo.train.config import TrainConfig

    console = make_console()
    cfg = load_and_check(config, set_, TrainConfig)  # a ConfigError exits 2 with its message (cli/main.py)
    if check:
        print_config(console, cfg)
        return
    from agent_grpo.recipes.grpo import GRPORecipe

    recipe = GRPORecipe(cfg, console=console, progress=not no_progress, log_every=log_every)
    recipe.setup()  # a ConfigError here: cross-checks that need the environment or the process count
    try:
        recipe.train()
    finally:
        recipe.cleanup()
    if not recipe.is_main:
        return
    console.print(f"done: metrics in {cfg.out_dir / 'metrics.jsonl'}, checkpoints in {cfg.out_dir / 'checkpoints'}, "
                  f"trajectories in {cfg.out_dir / 'trajectories'} (agent-grpo replay html {cfg.out_dir / 'trajectories'})")
