"""`agent-grpo eval CHECKPOINT`: evaluate any checkpoint on an environment split."""

from __future__ import annotations

from pathlib import Path

import typer

from agent_grpo.cli._console import make_console


def evaluate(
    checkpoint: str = typer.Argument(
        None, help="checkpoint folder (e.g. OUT/checkpoints/step_000050/model), or 'tiny'; none with --api-base"
    ),
    env: str = typer.Option(None, help="installed environment (default: env.name of a training config)"),
    split: str = typer.Option("test", help="task split"),
    n: int = typer.Option(200, "--n", min=1, help="tasks"),
    k: int = typer.Option(1, "--k", min=1, help="samples per task: 1 = greedy, >1 = Avg@k with temperature 1"),
    no_tools: bool = typer.Option(False, "--no-tools", help="offer no tools (ablation)"),
    out: Path = typer.Option(None, "--out", help="folder for results.md / results.json and the trajectories"),
    seed: int = typer.Option(0, help="task and sampling seed"),
    api_base: str = typer.Option(None, "--api-base", help="evaluate a chat API model instead: OpenAI-compatible base URL"),
    api_model: str = typer.Option(None, "--api-model", help="model name at --api-base"),
    api_key_env: str = typer.Option(None, "--api-key-env", help="environment variable holding the API key"),
) -> None:
    """Avg@k, accuracy with a 95% interval, tool calls per trajectory, zoom precision, terminations."""
    if (api_base is None) == (checkpoint is None) or (api_base is None) != (api_model is None):
        raise typer.BadParameter("give a CHECKPOINT, or --api-base URL with --api-model NAME (not both)")
    if api_base is not None:
        from agent_grpo.cli.eval_api import run_api_eval

        return run_api_eval(api_base=api_base, api_model=api_model, api_key_env=api_key_env, env_name=env,
                            split=split, n=n, k=k, no_tools=no_tools, out=out, seed=seed, console=make_console())
    import torch

    from agent_grpo.cli._config import check_out_dir, checkpoint_folder
    from agent_grpo.envs.registry import make_env
    from agent_grpo.evaluate import evaluate_policy, results_table, write_results
    from agent_grpo.models.chat import ChatFormat
    from agent_grpo.train.config import EnvConfig, ModelConfig
    from agent_grpo.train.policy import build_policy

    torch.set_num_threads(1)
    console = make_console()
    env = env or EnvConfig().name
    # Every input is checked before the model loads; a bad one is a message (cli/main.py), not a traceback.
    if checkpoint != "tiny":
        folder = checkpoint_folder(checkpoint)
        if folder != Path(checkpoint):
            console.print(f"using the model of the training checkpoint: {folder}", markup=False)
        checkpoint = str(folder)
    if out is not None:
        check_out_dir(out, "--out")
    environment = make_env(env, allow_tools=not no_tools)
    try:
        if split not in environment.splits:
            raise typer.BadParameter(f"{env} has no split {split!r}; its splits: {', '.join(environment.splits)}",
                                     param_hint="--split")
        model, processor = build_policy(ModelConfig(path=checkpoint), seed=seed)
        result, trajs = evaluate_policy(
            model, ChatFormat(processor), environment, name=_label(checkpoint), split=split, n=n, k=k, seed=seed
        )
    finally:
        environment.shutdown()
    console.print(results_table([result]), markup=False)
    console.print(f"terminations: {result.terminations}")
    if out is not None:
        from agent_grpo.store import RunMeta, RunStore

        path = write_results([result], out)
        with RunStore.create(out / "trajectories", meta=RunMeta.from_env(environment, recipe="eval")) as store:
            store.extend(trajs)
        console.print(f"wrote {path} and {out / 'trajectories'}")


def _label(checkpoint: str) -> str:
    """`step_000050` for RUN/checkpoints/step_000050/model, else the folder's name."""
    path = Path(checkpoint)
    return path.parent.name if path.name == "model" and path.parent.name.startswith("step_") else path.name
