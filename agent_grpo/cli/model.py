"""`agent-grpo model ...`: make and inspect model checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

model_app = typer.Typer(help="Make and inspect model checkpoints.", no_args_is_help=True)


@model_app.callback()
def _group() -> None:
    """Make and inspect model checkpoints."""  # a callback keeps `tiny` a sub-command


@model_app.command("tiny")
def tiny(
    out_dir: Annotated[
        Path, typer.Argument(help="folder to write the checkpoint to (created if missing)", metavar="OUT_DIR")
    ],
    size: Annotated[
        str, typer.Option(help="S: text 128 x 2 layers, vision 64 x 2; M: 256 x 4, vision 128 x 4")
    ] = "S",
    seed: Annotated[int, typer.Option(help="seed of the fan-in weight initialisation")] = 0,
    family: Annotated[str, typer.Option(help="qwen2_5_vl or qwen3_vl")] = "qwen2_5_vl",
) -> None:
    """Create a tiny, randomly initialised Qwen2.5-VL (or Qwen3-VL) checkpoint (model, tokenizer, processor, template)."""
    from agent_grpo.models.family import family_named
    from agent_grpo.models.tiny import SIZES, build_tiny_model, describe

    if family not in ("qwen2_5_vl", "qwen3_vl"):
        raise typer.BadParameter(f"unknown family {family!r}; choose qwen2_5_vl or qwen3_vl", param_hint="--family")
    size = size.upper()
    if size not in SIZES:
        raise typer.BadParameter(
            f"unknown size {size!r}; choose one of {', '.join(sorted(SIZES))}", param_hint="--size"
        )
    if out_dir.exists() and any(out_dir.iterdir()):
        raise typer.BadParameter(f"{out_dir} is not empty; choose a new folder", param_hint="OUT_DIR")
    model, _ = build_tiny_model(out_dir, size=size, seed=seed, family=family)
    typer.echo(f"wrote a tiny {family_named(family).title} (size {size}, seed {seed}) to {out_dir}")
    typer.echo(describe(model, out_dir))
    typer.echo(f"load it with agent_grpo.models.load_policy({str(out_dir)!r})")
