"""`agent-grpo visual-search ...`: this environment's own commands (entry-point group agent_grpo.commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="visual-search's own commands: perception pretraining of the tiny model.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """visual-search's own commands: perception pretraining of the tiny model."""  # keeps `pretrain` a sub-command


@app.command("pretrain")
def pretrain(
    out_dir: Annotated[Path, typer.Argument(help="folder for the pretrained checkpoint", metavar="OUT_DIR")],
    steps: Annotated[int, typer.Option(min=1, help="optimizer steps (batch 16, fresh samples each step)")] = 3000,
    seed: Annotated[int, typer.Option(help="initialisation and data seed")] = 0,
    size: Annotated[str, typer.Option(help="tiny model size, S or M")] = "S",
    lr: Annotated[float, typer.Option(help="AdamW learning rate (warm-up 50 steps, linear decay)")] = 1e-3,
    locate_steps: Annotated[
        int, typer.Option(min=0, help="stage-2 steps: locating the square at full view, reading kept (0: skip)")
    ] = 2000,
    init: Annotated[
        Path | None, typer.Option(help="a stage-1 checkpoint (made with --locate-steps 0) to run stage 2 from")
    ] = None,
) -> None:
    """Pretrain the tiny model's perception for visual-search (reading, locating); never the tool protocol."""
    import torch

    from agent_grpo_envs.visual_search.pretrain import pretrain as run

    torch.set_num_threads(1)  # reproducible on any CPU; see DESIGN.md on threads
    try:
        report = run(out_dir, steps=steps, seed=seed, size=size.upper(), lr=lr, locate_steps=locate_steps, init=init)
    except (OSError, ValueError, KeyError) as e:
        if init is None:
            raise
        raise typer.BadParameter(f"{init}: {e}", param_hint="--init") from e
    typer.echo(f"held-out accuracy: {report['held_out']}")
    typer.echo(f"checkpoint and pretrain_report.json in {out_dir}")
