"""`agent-grpo serve-engine CONFIG.yaml`: the generation server for `rollout.engine: vllm-server`.

Run it with the training config on the generation GPUs (same `--set` overrides as `train`): it builds the
model from `model`, the vLLM engine from `rollout.vllm`, and listens at `rollout.server.url`. The weights it
starts with do not matter: the trainer pushes its own at set-up and after every optimizer step.
"""

from __future__ import annotations

from pathlib import Path

import typer


def serve_engine(
    config: Path = typer.Argument(None, help="the training YAML config (model, rollout.vllm, rollout.server)"),
    set_: list[str] = typer.Option([], "--set", "-s", help="override a field, as for train"),
    host: str = typer.Option(None, "--host", help="address to bind; default: rollout.server.url's host (0.0.0.0: all)"),
    port: int = typer.Option(None, "--port", help="port to bind; default: rollout.server.url's port"),
) -> None:
    """Serve generation over HTTP (vLLM) for a trainer with rollout.engine: vllm-server."""
    from agent_grpo.cli._config import load_and_check
    from agent_grpo.train.config import TrainConfig

    cfg = load_and_check(config, set_, TrainConfig)  # a ConfigError exits 2 with its message (cli/main.py)
    service = build_service(cfg)
    from agent_grpo.rollout.engine_server import serve

    server = cfg.rollout.server
    serve(service, host or server.host, port or server.port)


def build_service(cfg):
    """The model of `cfg.model` in a `VLLMEngine` set up as the colocated engine would be."""
    from agent_grpo.envs.registry import make_env
    from agent_grpo.errors import ConfigError
    from agent_grpo.models.chat import ChatFormat
    from agent_grpo.rollout.engine_server import EngineService
    from agent_grpo.rollout.vllm_engine import VLLMEngine, import_vllm
    from agent_grpo.train.policy import build_policy

    try:
        import_vllm()
    except ImportError as e:
        hint = str(e).replace("rollout.engine: vllm needs", "serve-engine needs").split(". Or set rollout.engine")[0]
        raise ConfigError(f"{hint}; the trainer itself needs no vLLM with rollout.engine: vllm-server") from e
    max_images = cfg.rollout.server.max_images
    if max_images is None:  # the environment's own limit, as the colocated engine takes it
        env = make_env(cfg.env.name, allow_tools=cfg.env.allow_tools, **cfg.env.options)
        max_images = env.budget.max_images
        env.shutdown()
    model, processor = build_policy(cfg.model, seed=cfg.seed)
    model.eval()
    chat = ChatFormat(processor)
    v = cfg.rollout.vllm
    max_len = v.max_model_len or cfg.rollout.max_total_tokens
    engine = VLLMEngine(
        model, processor, chat, max_images=max_images, max_model_len=max_len,
        gpu_memory_utilization=v.gpu_memory_utilization, enforce_eager=v.enforce_eager, dtype=v.dtype,
        tensor_parallel_size=v.tensor_parallel_size, cpu_kvcache_gib=v.cpu_kvcache_gib, seed=v.seed,
    )
    del model  # the engine holds its own copy; the trainer's weights replace it at the first push
    return EngineService(engine, chat, model_name=cfg.model.path, max_model_len=max_len, max_images=max_images)
