"""Training configuration: typed models loaded from YAML, with `key.sub=value` overrides.

Every field is documented once, here. Cross-field rules are checked before any model is loaded and
fail with the value, the reason and the fix.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent_grpo.errors import ConfigError
from agent_grpo.rollout.engine import SamplingParams


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Sampling(SamplingParams):
    """`SamplingParams`, with unknown keys refused like every other section."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    path: str = Field(default="tiny", description="checkpoint folder or hub name; 'tiny' builds the tiny model")
    tiny_size: Literal["S", "M"] = "S"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    freeze_vision: bool = Field(default=False, description="keep the vision tower bit-identical")
    gradient_checkpointing: bool = False
    lora: bool = Field(default=False, description="train LoRA adapters (PEFT) instead of all weights")
    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    lora_targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="module names in the language model to adapt (the vision tower is never adapted)",
    )


class EnvConfig(_Strict):
    name: str = Field(default="visual-search", description="an installed environment, see `agent-grpo envs list`")
    train_split: str = "train"
    eval_split: str = "test"
    num_train_tasks: int | None = Field(default=None, description="None: as many as the split has / steps need")
    num_eval_tasks: int = Field(default=64, ge=1)
    allow_tools: bool = True
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the environment")
    reward_weights: dict[str, float] = Field(default_factory=dict, description="override rubric weights by name")


class RolloutSection(_Strict):
    tasks_per_step: int = Field(default=4, ge=1, description="distinct tasks (groups) per optimizer step")
    group_size: int = Field(default=8, ge=2, description="trajectories per task (G); GRPO needs at least 2")
    max_total_tokens: int = Field(default=2048, ge=16)
    sampling: _Sampling = Field(default_factory=lambda: _Sampling(max_new_tokens=96))
    dynamic_sampling: bool = Field(default=False, description="drop zero-variance groups and refill (DAPO)")
    max_refill_rounds: int = Field(default=2, ge=0)


class LossConfig(_Strict):
    variant: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    epsilon_low: float = Field(default=0.2, gt=0)
    epsilon_high: float = Field(default=0.28, gt=0)
    beta: float = Field(default=0.0, ge=0, description="KL weight to a frozen reference; 0 keeps no reference")
    num_iterations: int = Field(default=1, ge=1, description="optimizer passes per rollout batch")
    is_level: Literal["none", "token", "sequence"] = Field(
        default="token", description="importance-sampling correction when engine and trainer logprobs differ"
    )
    is_cap: float = Field(default=2.0, gt=0)
    mask_truncated: bool = Field(default=True, description="no loss on trajectories cut by a token limit")


class OptimConfig(_Strict):
    lr: float = Field(default=1e-5, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = Field(default=0, ge=0)
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    max_grad_norm: float = Field(default=1.0, gt=0)
    micro_batch_tokens: int = Field(default=8192, ge=64, description="token budget of one forward/backward")


class MemoryConfig(_Strict):
    """Byte limits of the in-memory image caches (MiB); what they hold is logged as `memory/...` each step."""

    decoded_images_mb: float = Field(
        default=256, ge=0, description="full-resolution pixels of lazy images (task canvases, stored images)"
    )
    model_views_mb: float = Field(default=128, ge=0, description="the model's resized views of images")
    engine_image_cache_mb: float = Field(
        default=64, ge=0, description="the HF engine's preprocessed images (patches) kept between generate calls"
    )


class TrainConfig(_Strict):
    """`agent-grpo train CONFIG.yaml`: everything a GRPO run needs."""

    out_dir: Path = Path("runs/grpo")
    seed: int = 0
    steps: int = Field(default=100, ge=1)
    save_every: int = Field(default=50, ge=1)
    eval_every: int = Field(default=0, ge=0, description="0: evaluate only at the end")
    keep_checkpoints: int = Field(default=2, ge=1)
    model: ModelConfig = Field(default_factory=ModelConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    rollout: RolloutSection = Field(default_factory=RolloutSection)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    tensorboard: bool = True
    wandb: bool = Field(default=False, description="also log to Weights & Biases (must be installed)")
    store_images: bool = Field(default=True, description="keep trajectory images in the run store")
    memory: MemoryConfig = Field(default_factory=MemoryConfig)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.rollout.sampling.max_new_tokens >= self.rollout.max_total_tokens:
            raise ValueError(
                f"rollout.sampling.max_new_tokens ({self.rollout.sampling.max_new_tokens}) must be below "
                f"rollout.max_total_tokens ({self.rollout.max_total_tokens}): one turn must fit with its prompt; "
                "raise rollout.max_total_tokens or lower rollout.sampling.max_new_tokens"
            )
        if self.save_every > self.steps:
            self.save_every = self.steps  # always save at the end
        if self.model.dtype != "float32" and self.model.path == "tiny":
            raise ValueError("the tiny model trains in float32 on CPU; set model.dtype: float32")
        return self


def _set_path(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {key} is not a section")
    node[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] = (), model=TrainConfig):
    """Read YAML (optional) and apply `a.b=value` overrides (values parsed as YAML), then validate."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist; pass a YAML file (see examples/configs/)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of settings, got {type(data).__name__}")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        _set_path(data, key.strip(), yaml.safe_load(raw))
    try:
        return model.model_validate(data)
    except ValidationError as e:
        lines = [f"  {_explain(err, model)}" for err in e.errors()]
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid training config{where}:\n" + "\n".join(lines)) from e


def _section(model, loc: list[str]):
    """The config model at `loc` (a path of field names), or None past a plain value."""
    for name in loc:
        field = model.model_fields.get(name) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        model = field.annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _explain(err: dict, model) -> str:
    """One validation error as `field: what is wrong; how to fix it`."""
    loc = [str(x) for x in err["loc"]]
    where = ".".join(loc) or "config"
    if err["type"] == "extra_forbidden":
        section = _section(model, loc[:-1])
        names = list(section.model_fields) if section else []
        close = difflib.get_close_matches(loc[-1], names, n=1)
        hint = f"did you mean {'.'.join([*loc[:-1], close[0]])}? " if close else ""
        return f"{where}: unknown setting; {hint}valid keys here: {', '.join(names)}"
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:
        return msg
    parent = _section(model, loc[:-1])
    field = parent.model_fields.get(loc[-1]) if parent else None
    about = f" ({field.description})" if field is not None and field.description else ""
    return f"{where}: {msg}, got {err.get('input')!r}{about}"
