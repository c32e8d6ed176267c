"""What `train` and `sft` (and `--check`) share: load a config, then check what can be checked before any model
loads: the environment builds with its options, the splits and reward weights exist, the paths are usable."""

from __future__ import annotations

import inspect
from pathlib import Path

from pydantic import BaseModel, ValidationError

from agent_grpo.errors import ConfigError, PluginError
from agent_grpo.train.config import EnvConfig, load_config


def load_and_check(path: Path | None, overrides: list[str], model: type[BaseModel]) -> BaseModel:
    """The validated config; raises ConfigError (the CLI prints it and exits 2) on anything wrong with it."""
    cfg = load_config(path, overrides, model=model)
    check_out_dir(cfg.out_dir, "out_dir")
    check_model_path(cfg.model.path)
    check_env(cfg.env)
    return cfg


def print_config(console, cfg: BaseModel) -> None:
    """`--check`: the validated config as JSON, highlighted on a terminal, plain (never wrapped) in a pipe."""
    if console.is_terminal:
        console.print_json(cfg.model_dump_json())
    else:
        print(cfg.model_dump_json(indent=2), flush=True)


def check_out_dir(path: Path, field: str) -> None:
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{field}: {path} exists and is not a folder; choose a folder")


def checkpoint_folder(path: str | Path) -> Path:
    """A local checkpoint as given, or its `model/` when given a training checkpoint (`step_NNNNNN/`).
    A run directory, or a folder with no model in it, is refused with the path to pass instead."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"checkpoint {path} is not a folder; pass a checkpoint folder, e.g. RUN/checkpoints/step_000050/model")
    if (path / "config.json").is_file():
        return path
    if (path / "model" / "config.json").is_file():
        return path / "model"
    steps = sorted((path / "checkpoints").glob("step_*/model/config.json"))
    if steps:
        raise ConfigError(f"{path} is a run directory, not a checkpoint; pass one of its checkpoints, "
                          f"e.g. {steps[-1].parent}")
    raise ConfigError(f"{path} holds no model (no config.json); pass a checkpoint folder, e.g. "
                      "RUN/checkpoints/step_000050/model, or make one with `agent-grpo model tiny DIR`")


def check_model_path(path: str) -> None:
    """`model.path` names a local folder that exists: it must hold a model (hub names are left to the loader)."""
    if path != "tiny" and Path(path).exists():
        found = checkpoint_folder(path)
        if found != Path(path):
            raise ConfigError(f"model.path: {path} is a training checkpoint; set model.path: {found}")


def check_env(cfg: EnvConfig) -> None:
    """Build the environment as the recipe will (cheap: tasks are not loaded), then shut it down."""
    from agent_grpo.envs.registry import load_envs

    envs = load_envs()
    if cfg.name not in envs:
        raise ConfigError(f"env.name: {cfg.name!r} is not installed; installed: {', '.join(sorted(envs)) or 'none'} "
                          "(see `agent-grpo envs list`)")
    factory = envs[cfg.name].factory
    accepted = [n for n, p in inspect.signature(factory).parameters.items()
                if n not in ("budget", "tools", "rubric", "allow_tools") and p.kind is not p.VAR_KEYWORD]
    try:
        env = factory(allow_tools=cfg.allow_tools, **cfg.options)
    except TypeError as e:
        raise ConfigError(f"env.options of {cfg.name}: {e}; it accepts {', '.join(accepted) or 'no options'}") from e
    except (ValidationError, ValueError, PluginError) as e:
        raise ConfigError(f"env.options of {cfg.name} are invalid: {e}") from e
    try:
        for field, split in (("env.train_split", cfg.train_split), ("env.eval_split", cfg.eval_split)):
            if split not in env.splits:
                raise ConfigError(f"{field}: {cfg.name} has no split {split!r}; its splits: {', '.join(env.splits)}")
        if cfg.reward_weights:
            try:
                env.rubric.with_weights(**cfg.reward_weights)
            except ValueError as e:
                raise ConfigError(f"env.reward_weights: {e}") from e
    finally:
        env.shutdown()
