"""Training configuration: typed models loaded from YAML, with `key.sub=value` overrides.

Every field is documented once, here. Cross-field rules are checked before any model is loaded and
fail with the value, the reason and the fix.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent_grpo.errors import ConfigError
from agent_grpo.rollout.engine import SamplingParams
from agent_grpo.rollout.server_engine import ServerSettings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# numpy's global seed takes 0 <= seed < 2**32; a negative seed fails deep inside setup otherwise.
Seed = Annotated[int, Field(ge=0, lt=2**32, description="random seed, 0 <= seed < 2**32")]
# AdamW's moment decay rates.
Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


class _Sampling(SamplingParams):
    """`SamplingParams`, with unknown keys refused like every other section."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    path: str = Field(default="tiny", description="checkpoint folder or hub name; 'tiny' builds the tiny model")
    family: str | None = Field(
        default=None,
        description="qwen2_5_vl, qwen2_vl or qwen3_vl; None follows the checkpoint's config.json. With path 'tiny' "
        "it picks the tiny model's family (qwen2_5_vl or qwen3_vl; None: qwen2_5_vl); with a checkpoint it must "
        "match the checkpoint's model_type",
    )
    tiny_size: Literal["S", "M"] = "S"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    freeze_vision: bool = Field(default=False, description="keep the vision tower bit-identical")
    gradient_checkpointing: bool = Field(
        default=False, description="recompute the language model's decoder layers in the backward"
    )
    vision_gradient_checkpointing: bool | None = Field(
        default=None, description="recompute the vision tower's blocks in the backward; None: as gradient_checkpointing"
    )
    master_weights: Literal["model", "float32"] = Field(
        default="model",
        description="float32: AdamW on float32 master copies of bf16/fp16 weights (fp32 grads and state; one process)",
    )
    compile: bool = Field(
        default=False, description="torch.compile each decoder layer and vision block (regional; GPU)"
    )
    lora: bool = Field(default=False, description="train LoRA adapters (PEFT) instead of all weights")
    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    lora_targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="module names in the language model to adapt (the vision tower is never adapted)",
    )

    @field_validator("family")
    @classmethod
    def _known_family(cls, family: str | None) -> str | None:
        from agent_grpo.models.family import family_named

        return None if family is None else family_named(family).name  # ValueError names the supported ones

    @model_validator(mode="after")
    def _family_fits_the_model(self) -> ModelConfig:
        if self.path == "tiny" and self.family not in (None, "qwen2_5_vl", "qwen3_vl"):
            raise ValueError(f"model.family {self.family!r}: the tiny model is built as qwen2_5_vl or qwen3_vl")
        config = Path(self.path) / "config.json"
        if self.family is not None and self.path != "tiny" and config.is_file():
            from agent_grpo.models.family import family_of_config

            found = family_of_config(config).name
            if found != self.family:
                raise ValueError(
                    f"model.family is {self.family!r} but {self.path} is a {found!r} checkpoint; "
                    f"set model.family: {found} (or leave it unset)"
                )
        return self


def _default_env_name() -> str:
    """The plugins' choice, not the framework's: the framework names no environment."""
    from agent_grpo.recipes.demos import default_env_name

    return default_env_name()


class EnvConfig(_Strict):
    name: str = Field(
        default_factory=_default_env_name,
        description="an installed environment (`agent-grpo envs list`); unset: the one the `default` demo trains on",
    )
    train_split: str = "train"
    eval_split: str = "test"
    num_train_tasks: int | None = Field(default=None, description="None: as many as the split has / steps need")
    num_eval_tasks: int = Field(default=64, ge=1)
    allow_tools: bool = True
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the environment")
    reward_weights: dict[str, float] = Field(default_factory=dict, description="override rubric weights by name")


class VLLMSection(_Strict):
    """`rollout.vllm`: the vLLM engine (`rollout.engine: vllm`), in the trainer's process."""

    gpu_memory_utilization: float = Field(
        default=0.3, gt=0.0, le=1.0, description="fraction of GPU memory vLLM may take (weights + KV cache)"
    )
    max_model_len: int | None = Field(
        default=None, ge=16, description="longest context vLLM accepts; None: rollout.max_total_tokens"
    )
    enforce_eager: bool = Field(default=True, description="true: eager mode; false: CUDA graphs (GPU only)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto: the trained model's dtype"
    )
    tensor_parallel_size: int = Field(default=1, ge=1)
    cpu_kvcache_gib: int = Field(default=1, ge=1, description="KV cache on the CPU backend (VLLM_CPU_KVCACHE_SPACE)")
    sleep_during_update: bool = Field(
        default=False, description="free vLLM's KV cache during the update (vLLM sleep mode; CUDA only)"
    )
    sleep_level: Literal[1, 2] = Field(
        default=1,
        description="with sleep_during_update: 1 frees the KV cache and moves the engine's weights to host memory; "
        "2 frees the weights too (safe here: the new weights are synced right after the wake-up)",
    )
    seed: int = Field(default=0, description="vLLM's engine seed; each request also gets its own seed from its "
                      "trajectory id, so samples do not depend on the process (DDP rank) or batch")

    @model_validator(mode="after")
    def _sleep_level_needs_sleep(self):
        if self.sleep_level != 1 and not self.sleep_during_update:
            raise ValueError(
                f"rollout.vllm.sleep_level={self.sleep_level} only applies with rollout.vllm.sleep_during_update: true; "
                "set sleep_during_update: true (GPU only) or drop sleep_level"
            )
        return self


class ServerSection(ServerSettings):
    """`rollout.server`: the generation server (`rollout.engine: vllm-server`, `agent-grpo serve-engine`);
    each field is documented in `rollout/server_engine.py`. The server's engine reads `rollout.vllm`."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RolloutSection(_Strict):
    tasks_per_step: int = Field(default=4, ge=1, description="distinct tasks (groups) per optimizer step")
    group_size: int = Field(default=8, ge=2, description="trajectories per task (G); GRPO needs at least 2")
    max_total_tokens: int = Field(default=2048, ge=16)
    sampling: _Sampling = Field(default_factory=lambda: _Sampling(max_new_tokens=96))
    dynamic_sampling: bool = Field(default=False, description="drop zero-variance groups and refill (DAPO)")
    max_refill_rounds: int = Field(default=2, ge=0)
    engine: Literal["hf", "vllm", "vllm-server"] = Field(
        default="hf", description="hf: transformers generate with the trained module; vllm: vLLM in this process "
        "(pip install -e '.[vllm]'); vllm-server: vLLM in its own process (agent-grpo serve-engine, rollout.server)"
    )
    vllm: VLLMSection = Field(default_factory=VLLMSection)
    server: ServerSection = Field(default_factory=ServerSection)
    # ---- asynchronous rollouts (issue 16: scheduling, pipelining) ----
    schedule: Literal["batch", "trajectory"] = Field(
        default="batch", description="trajectory: each trajectory advances as soon as its own turn is back, its tools "
        "overlapping the others' decoding (vLLM decodes continuously; HF keeps one generate per turn)",
    )
    max_staleness: Literal[0, 1] = Field(
        default=0, description="1: step k+1's rollouts are generated while step k's update runs (one policy version "
        "behind, corrected by importance sampling against the recorded behaviour logprobs; needs loss.is_level)",
    )
    env_threads: int = Field(default=8, ge=1, description="schedule trajectory: environment steps (tools) at once")
    turn_timeout_s: float = Field(
        default=600.0, gt=0, description="schedule trajectory: longest wait for one engine turn or environment step",
    )


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
    betas: tuple[Beta, Beta] = Field(default=(0.9, 0.99), description="AdamW (beta1, beta2), each in [0, 1)")
    warmup_steps: int = Field(default=0, ge=0)
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    max_grad_norm: float = Field(default=1.0, gt=0)
    micro_batch_tokens: int = Field(default=8192, ge=64, description="token budget of one forward/backward")
    packing: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="pack trajectories into one row without padding; auto: when the attention is "
        "flash-attention or flex attention (else right-padding, see rollout/packing.py)",
    )
    head_chunk_tokens: int = Field(
        default=512, ge=1, description="positions per chunk of the logprob head (memory: chunk x vocabulary)"
    )


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
    seed: Seed = 0
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
        max_len = self.rollout.vllm.max_model_len
        uses_vllm = self.rollout.engine in ("vllm", "vllm-server")
        if uses_vllm and max_len is not None and max_len <= self.rollout.sampling.max_new_tokens:
            raise ValueError(
                f"rollout.vllm.max_model_len ({max_len}) must be above rollout.sampling.max_new_tokens "
                f"({self.rollout.sampling.max_new_tokens}); raise max_model_len or leave it unset (rollout.max_total_tokens)"
            )
        if self.rollout.engine == "vllm-server" and self.rollout.vllm.sleep_during_update:
            raise ValueError(
                "rollout.vllm.sleep_during_update: the engine server has its own GPUs and stays awake during the "
                "update; set it to false with rollout.engine: vllm-server"
            )
        if self.save_every > self.steps:
            self.save_every = self.steps  # always save at the end
        if self.model.dtype != "float32" and self.model.path == "tiny":
            raise ValueError("the tiny model trains in float32 on CPU; set model.dtype: float32")
        return self


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors and aliases: a few hundred bytes of nested aliases ("billion laughs") expand
    to billions of values once validated. Configs never need them; `--set` overrides repeat a value."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent) or getattr(self.peek_event(), "anchor", None) is not None:
            event = self.peek_event()
            raise yaml.MarkedYAMLError(
                None, None, "anchors and aliases (&name, *name) are not allowed in a config; write the values out",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def parse_yaml(text: str) -> Any:
    """YAML text -> Python values, refusing aliases (see `_NoAliasLoader`)."""
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml_file(path: str | Path) -> dict:
    """A config file's mapping of settings; every way it can be unreadable is a ConfigError."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist; pass a YAML file (see examples/configs/)")
    if not path.is_file():
        raise ConfigError(f"config file {path} is not a file; pass a YAML file (see examples/configs/)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from e
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from e
    try:
        data = parse_yaml(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, got {type(data).__name__}")
    return data


def apply_override(data: dict, item: str) -> None:
    """Apply one `section.key=value` override to `data` (the value is parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    dotted, raw = (part.strip() for part in item.split("=", 1))
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"override {item!r}: {dotted!r} is not a setting name; write section.key=value")
    try:
        value = parse_yaml(raw)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"override {item!r}: the value {raw!r} is not valid YAML ({problem}); quote it") from e
    node = data
    for i, key in enumerate(keys[:-1]):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(keys[: i + 1])} is a value, not a section")
    node[keys[-1]] = value


def apply_preset(data: dict, overrides: list[str] = ()) -> None:
    """Apply the preset chosen by `preset: NAME` from the config's `presets:` section, in place.

    A preset is a named set of `section.key: value` settings kept in the same file, e.g. a CPU smoke test
    of a GPU recipe (`--set preset=smoke`: the tiny model, the shipped sample rows, one step). Its settings
    go in first, then `overrides` again, so an explicit `--set` beats the preset. Both keys are removed."""
    presets, name = data.pop("presets", None) or {}, data.pop("preset", None)
    if not isinstance(presets, dict) or not all(isinstance(v, dict) for v in presets.values()):
        raise ConfigError("presets: must map each preset name to a mapping of section.key: value settings")
    if name is None:
        return
    if name not in presets:
        have = ", ".join(sorted(presets)) or "none"
        raise ConfigError(f"preset: {name!r} is not defined in this config's presets (it has: {have})")
    for dotted, value in presets[name].items():
        keys = str(dotted).split(".")
        node = data
        for i, key in enumerate(keys[:-1]):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"presets.{name}: {'.'.join(keys[: i + 1])} is a value, not a section")
        node[keys[-1]] = value
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key != "preset" and not key.startswith("presets."):  # already applied above
            apply_override(data, item)


def load_config(path: str | Path | None = None, overrides: list[str] = (), model=TrainConfig):
    """Read YAML (optional) and apply `a.b=value` overrides (values parsed as YAML) and the chosen
    preset (`apply_preset`), then validate."""
    data = read_yaml_file(path) if path is not None else {}
    for item in overrides:
        apply_override(data, item)
    apply_preset(data, overrides)
    where = f" in {path}" if path else ""
    try:
        cfg = model.model_validate(data)
    except ValidationError as e:
        lines = [f"  {_explain(err, model)}" for err in e.errors()]
        raise ConfigError(f"invalid training config{where}:\n" + "\n".join(lines)) from e
    bad = [f"  {name}: must be a finite number, got {value!r}; write a finite value" for name, value in _non_finite(cfg)]
    if bad:
        raise ConfigError(f"invalid training config{where}:\n" + "\n".join(bad))
    return cfg


def _non_finite(value: Any, where: str = "") -> list[tuple[str, float]]:
    """(field, value) for every inf or NaN float anywhere in a validated config: `.inf` or `.nan` parse as
    floats and pass `gt=0`-style bounds, then poison the run (a NaN learning rate trains nothing)."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [(where or "config", value)]
    if isinstance(value, BaseModel):
        items = ((name, getattr(value, name)) for name in type(value).model_fields)
    elif isinstance(value, dict):
        items = ((str(k), v) for k, v in value.items())
    elif isinstance(value, list | tuple):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return []
    return [found for name, v in items for found in _non_finite(v, f"{where}.{name}" if where else name)]


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
    about = ""
    for i in range(len(loc), 0, -1):  # the innermost named field: `optim.betas.0` is described by `betas`
        parent = _section(model, loc[: i - 1])
        field = parent.model_fields.get(loc[i - 1]) if parent else None
        if field is not None:
            about = f" ({field.description})" if field.description else ""
            break
    got = repr(err.get("input"))
    got = got if len(got) <= 200 else got[:200] + "..."
    return f"{where}: {msg}, got {got}{about}"
