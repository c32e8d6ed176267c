"""`agent-grpo eval CHECKPOINT`: evaluate any checkpoint on an environment split, as a benchmark harness.

    agent-grpo eval RUN/checkpoints/step_000080/model --env vstar --set root=/data/vstar_bench --k 4 --out runs/eval

Prints the results table (Avg@k with a 95% interval, pass@k, tool use, the environment's own columns) and
the per-category table; `--out` gets results.md, results.json and the trajectories. The prompt and the
answer scoring are the environment's (docs/evaluation.md states them for V*-Bench and HR-Bench).
"""

from __future__ import annotations

from pathlib import Path

import typer

from agent_grpo.cli._console import make_console


def make_engine(checkpoint: str, seed: int):
    """(engine, chat format, label) for a local checkpoint or 'tiny': the one place an engine is chosen."""
    from agent_grpo.models.chat import ChatFormat
    from agent_grpo.rollout import HFEngine
    from agent_grpo.train.config import ModelConfig
    from agent_grpo.train.policy import build_policy

    model, processor = build_policy(ModelConfig(path=checkpoint), seed=seed)
    chat = ChatFormat(processor)
    return HFEngine(model.eval(), chat), chat, _label(checkpoint)


def evaluate(
    checkpoint: str = typer.Argument(
        None, help="checkpoint folder (e.g. OUT/checkpoints/step_000050/model), or 'tiny'; none with --api-base"
    ),
    env: str = typer.Option(None, help="installed environment (default: the one the `default` demo trains on)"),
    set_: list[str] = typer.Option([], "--set", help="environment option key=value (repeatable), e.g. root=/data/vstar"),
    split: str = typer.Option("test", help="task split"),
    n: int = typer.Option(200, "--n", min=1, help="tasks (the first n of the split)"),
    k: int = typer.Option(1, "--k", min=1, help="samples per task: 1 = greedy, >1 = Avg@k with temperature 1"),
    max_new_tokens: int = typer.Option(96, "--max-new-tokens", min=1, help="tokens per model turn"),
    max_total_tokens: int = typer.Option(
        None, "--max-total-tokens", min=16,
        help="tokens per trajectory, images included (default: room for the environment's visual budget and every turn)"),
    no_tools: bool = typer.Option(False, "--no-tools", help="offer no tools (ablation)"),
    out: Path = typer.Option(None, "--out", help="folder for results.md / results.json and the trajectories"),
    seed: int = typer.Option(0, help="task and sampling seed"),
    api_base: str = typer.Option(None, "--api-base", help="evaluate a chat API model instead: OpenAI-compatible base URL"),
    api_model: str = typer.Option(None, "--api-model", help="model name at --api-base"),
    api_key_env: str = typer.Option(None, "--api-key-env", help="environment variable holding the API key"),
) -> None:
    """Avg@k, pass@k, accuracy per category, tool use and the environment's own columns."""
    if (api_base is None) == (checkpoint is None) or (api_base is None) != (api_model is None):
        raise typer.BadParameter("give a CHECKPOINT, or --api-base URL with --api-model NAME (not both)")
    if api_base is not None:
        from agent_grpo.cli._env_options import parse_env_options
        from agent_grpo.cli.eval_api import run_api_eval
        from agent_grpo.envs.registry import load_envs
        from agent_grpo.recipes.demos import default_env_name

        env, envs = env or default_env_name(), load_envs()
        options = parse_env_options(env, envs[env].factory, set_) if env in envs else {}
        return run_api_eval(api_base=api_base, api_model=api_model, api_key_env=api_key_env, env_name=env,
                            split=split, n=n, k=k, no_tools=no_tools, out=out, seed=seed, console=make_console(),
                            env_options=options)
    import torch
    from pydantic import ValidationError

    from agent_grpo.cli._config import check_out_dir, checkpoint_folder
    from agent_grpo.cli._env_options import parse_env_options
    from agent_grpo.envs.registry import load_envs, make_env
    from agent_grpo.errors import ConfigError
    from agent_grpo.evaluate import category_table, evaluate_engine, results_table, write_results
    from agent_grpo.recipes.demos import default_env_name

    torch.set_num_threads(1)
    console = make_console()
    env = env or default_env_name()
    # Every input is checked before the model loads; a bad one is a message (cli/main.py), not a traceback.
    if checkpoint != "tiny":
        folder = checkpoint_folder(checkpoint)
        if folder != Path(checkpoint):
            console.print(f"using the model of the training checkpoint: {folder}", markup=False)
        checkpoint = str(folder)
    if out is not None:
        check_out_dir(out, "--out")
    envs = load_envs()
    options = parse_env_options(env, envs[env].factory, set_) if env in envs else {}
    try:
        environment = make_env(env, allow_tools=not no_tools, **options)  # an uninstalled name: PluginError
    except (TypeError, ValidationError) as e:
        raise ConfigError(f"--set: {env} refused its options: {e}") from e
    try:
        if split not in environment.splits:
            raise typer.BadParameter(f"{env} has no split {split!r}; its splits: {', '.join(environment.splits)}",
                                     param_hint="--split")
        engine, chat, label = make_engine(checkpoint, seed)
        result, trajs = evaluate_engine(
            engine, chat, environment, name=label, split=split, n=n, k=k, seed=seed,
            max_new_tokens=max_new_tokens, max_total_tokens=max_total_tokens or token_limit(environment, max_new_tokens),
        )
    finally:
        environment.shutdown()
    console.print(results_table([result]), markup=False)
    if table := category_table(result):
        console.print("\n" + table, markup=False)
    console.print(f"\nterminations: {result.terminations}", markup=False)
    if result.protocol:
        console.print(f"protocol: {result.protocol}", markup=False)
    if out is not None:
        from agent_grpo.store import RunMeta, RunStore

        path = write_results([result], out)
        with RunStore.create(out / "trajectories", meta=RunMeta.from_env(environment, recipe="eval")) as store:
            store.extend(trajs)
        console.print(f"wrote {path} and {out / 'trajectories'}")


def token_limit(environment, max_new_tokens: int) -> int:
    """A trajectory's default token cap: every image the visual budget allows, every turn at full length, and
    512 tokens of system prompt and question, plus 256 per turn for tool results and notices."""
    budget = environment.budget
    return budget.max_visual_tokens + budget.max_turns * (max_new_tokens + 256) + 512


def _label(checkpoint: str) -> str:
    """`step_000050` for RUN/checkpoints/step_000050/model, else the folder's name."""
    path = Path(checkpoint)
    return path.parent.name if path.name == "model" and path.parent.name.startswith("step_") else path.name
