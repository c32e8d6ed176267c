"""`agent-grpo sft CONFIG.yaml`: validate everything, then run the SFT warm-start recipe."""

from __future__ import annotations

from pathlib import Path

import typer

from agent_grpo.cli._console import make_console


def sft(
    config: Path = typer.Argument(None, help="YAML config (see examples/configs/); omit for all defaults"),
    set_: list[str] = typer.Option([], "--set", "-s", help="override a field: --set data.quality=0.8"),
    check: bool = typer.Option(False, "--check", help="validate the config and exit"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no live progress bar: a log line per step instead"),
    log_every: int = typer.Option(
        1, "--log-every", min=1, help="without a live bar (a pipe, a batch job, --no-progress): a line every N steps"
    ),
) -> None:
    """Supervised warm start on demonstrations (scripted, a run directory or an export); loss on model turns only."""
    from agent_grpo.cli._config import load_and_check, print_config
    from agent_grpo.recipes.sft import SFTConfig

    console = make_console()
    cfg = load_and_check(config, set_, SFTConfig)  # a ConfigError exits 2 with its message (cli/main.py)
    if check:
        print_config(console, cfg)
        return
    from agent_grpo.recipes.sft import SFTRecipe

    recipe = SFTRecipe(cfg, console=console, progress=not no_progress, log_every=log_every)
    try:
        recipe.setup()  # a ConfigError here: checks that need the data, e.g. too few demonstrations
        recipe.train()
    finally:
        recipe.cleanup()
    start = recipe.merged_path or f"{cfg.out_dir / 'checkpoints'}/step_{cfg.steps:06d}/model"
    console.print(f"done: metrics in {cfg.out_dir / 'metrics.jsonl'}, checkpoints in {cfg.out_dir / 'checkpoints'}; "
                  f"start GRPO from it with --set model.path={start}")
