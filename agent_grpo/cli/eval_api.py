"""`agent-grpo eval --api-base URL --api-model NAME`: a chat API model as an evaluation baseline.

Same environment, tasks, rubric and results table as a checkpoint's evaluation; the policy is a remote
model behind an OpenAI-compatible endpoint (`agent_grpo.rollout.api_rollout`). k = 1 is greedy
(temperature 0), k > 1 samples at temperature 1, as for checkpoints.
"""

from __future__ import annotations

from pathlib import Path

from agent_grpo.api_client import ChatAPIConfig, ChatClient
from agent_grpo.envs.api import Environment
from agent_grpo.evaluate import EvalResult, summarize
from agent_grpo.rollout.api_rollout import APIRolloutConfig, api_rollout
from agent_grpo.trajectory import Trajectory


def evaluate_api(
    client: ChatClient, env: Environment, *, name: str | None = None, split: str = "test", n: int = 200,
    k: int = 1, seed: int = 0, max_tokens: int = 512,
) -> tuple[EvalResult, list[Trajectory]]:
    name = name or client.config.model
    tasks = list(env.load_tasks(split, n=n, seed=seed))
    config = APIRolloutConfig(group_size=k, temperature=0.0 if k == 1 else 1.0, max_tokens=max_tokens, seed=seed)
    trajs = api_rollout(env, client, tasks, config, tag=f"eval-{name}-")
    return summarize(name, env.name, split, trajs, k, env.eval_protocol()), trajs


def run_api_eval(
    *, api_base: str, api_model: str, api_key_env: str | None, env_name: str | None, split: str, n: int, k: int,
    no_tools: bool, out: Path | None, seed: int, console, env_options: dict | None = None,
) -> None:
    """The whole `eval` command for an API model: check inputs, run, print, write.

    `env_options` are the environment's keyword arguments (what `eval --set` gives a checkpoint's run)."""
    import typer

    from agent_grpo.cli._config import check_out_dir
    from agent_grpo.envs.registry import make_env
    from agent_grpo.evaluate import category_table, results_table, write_results
    from agent_grpo.recipes.demos import default_env_name

    env_name = env_name or default_env_name()
    config = ChatAPIConfig(base_url=api_base, model=api_model, api_key_env=api_key_env)
    config.api_key()  # a missing key variable is a message now, not one error per trajectory
    if out is not None:
        check_out_dir(out, "--out")
    environment = make_env(env_name, allow_tools=not no_tools, **(env_options or {}))
    try:
        if split not in environment.splits:
            raise typer.BadParameter(f"{env_name} has no split {split!r}; its splits: {', '.join(environment.splits)}",
                                     param_hint="--split")
        with ChatClient(config) as client:
            result, trajs = evaluate_api(client, environment, split=split, n=n, k=k, seed=seed)
    finally:
        environment.shutdown()
    console.print(results_table([result]), markup=False)
    if table := category_table(result):
        console.print("\n" + table, markup=False)
    console.print(f"terminations: {result.terminations}", markup=False)
    errors = sum(1 for t in trajs if t.metrics.get("api_error"))
    if errors:
        console.print(f"{errors} of {len(trajs)} trajectories ended on an API error (see the log)", markup=False)
    if out is not None:
        from agent_grpo.store import RunMeta, RunStore

        path = write_results([result], out)
        with RunStore.create(out / "trajectories", meta=RunMeta.from_env(
            environment, recipe="eval-api", api_base=api_base, api_model=api_model,
        )) as store:
            store.extend(trajs)
        console.print(f"wrote {path} and {out / 'trajectories'}")
