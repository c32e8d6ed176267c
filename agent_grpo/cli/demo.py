"""`agent-grpo demo`: the README's main job. GRPO teaches the tiny VLM to zoom, on CPU, no downloads.

Runs the pipeline in `agent_grpo/recipes/pipeline.py` with a config an installed package ships as a demo
(`agent_grpo/recipes/demos.py`; the built-in `default` is visual-search's, in the environment package):
a perception-pretrained tiny Qwen2.5-VL -> eval -> SFT warm start -> eval -> GRPO -> eval, then a results
table, PNG curves and an HTML report. `--quick` is the same pipeline, small (a CI smoke test: plumbing, not learning).
"""

from __future__ import annotations

from pathlib import Path

import typer

from agent_grpo.cli._console import make_console

# Small enough for a CI smoke test (a few minutes on one core); learning is not expected.
QUICK = [
    "eval.n=8", "sft.steps=4", "sft.save_every=4", "sft.env.num_train_tasks=16", "sft.env.num_eval_tasks=4",
    "grpo.steps=2", "grpo.save_every=2", "grpo.rollout.tasks_per_step=2", "grpo.rollout.group_size=2",
    "grpo.env.num_eval_tasks=2",
    "torch_threads=1",  # a smoke run, as in the tests: one thread cannot slow down a busy machine
]


def demo(
    name: str = typer.Option("default", "--demo", help="an installed demo (`--list` shows them)"),
    config: Path = typer.Option(None, "--config", help="a pipeline YAML instead of an installed demo"),
    list_: bool = typer.Option(False, "--list", help="list the installed demos and exit"),
    out: Path = typer.Option(None, "--out", help="output folder (default: the config's out_dir, runs/demo)"),
    set_: list[str] = typer.Option([], "--set", "-s", help="override a field: --set grpo.steps=80"),
    quick: bool = typer.Option(False, "--quick", help="a few-minute smoke run of every stage (no learning)"),
    fresh: bool = typer.Option(
        False, "--fresh", help="delete the output folder first, if agent-grpo wrote it (default: resume it)"
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="no live progress bars: a log line per step instead"),
    log_every: int = typer.Option(
        1, "--log-every", min=1, help="without a live bar (a pipe, a batch job, --no-progress): a line every N steps"
    ),
) -> None:
    """Pretrained tiny VLM -> eval -> SFT -> eval -> GRPO -> eval; table, plots, report."""
    from agent_grpo.cli._config import check_out_dir
    from agent_grpo.cli._outputs import claim, replace
    from agent_grpo.recipes.demos import demo_config, list_demos
    from agent_grpo.recipes.pipeline import Pipeline, load_pipeline_config

    console = make_console()
    if list_:
        for demo_name, package in list_demos().items():
            console.print(f"{demo_name}  ({package}): {demo_config(demo_name)}", markup=False, highlight=False)
        return
    overrides = [*(QUICK if quick else []), *set_]
    if out is not None:
        overrides.append(f"out_dir={out}")
    elif quick:
        overrides.append("out_dir=runs/demo_quick")
    cfg = load_pipeline_config(config or demo_config(name), overrides)  # a ConfigError: a message (cli/main.py)
    check_out_dir(cfg.out_dir, "--out")
    if fresh:
        replace(cfg.out_dir, "demo")  # never a folder agent-grpo did not write
    else:
        claim(cfg.out_dir, "demo")
    pipeline = Pipeline(cfg, console=console, progress=not no_progress, log_every=log_every)
    pipeline.run()
    console.print(pipeline.summary(), markup=False)
    console.print(f"\nresults: {cfg.out_dir / 'results.md'}\ncurves:  {cfg.out_dir / 'curves_grpo.png'}, "
                  f"{cfg.out_dir / 'curves_sft.png'}\nreport:  {cfg.out_dir / 'report.html'}\n"
                  f"replay:  agent-grpo replay list {cfg.out_dir / 'grpo' / 'trajectories'}")
