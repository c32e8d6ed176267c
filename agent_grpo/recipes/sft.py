"""The SFT warm start behind `agent-grpo sft CONFIG.yaml`: teach the tool protocol before GRPO.

    recipe = SFTRecipe(cfg)      # validated config, seeds
    recipe.setup()               # policy, environment, demonstrations, optimizer, logger; resume
    recipe.train()               # batch -> masked NLL step -> log -> eval -> checkpoint, per step
    recipe.cleanup()

Demonstrations (`train/sft_data.py`) carry the same token segments the rollout driver makes, and the
loss (`train/sft_loss.py`) trains only the sampled (assistant) tokens, so the checkpoint is trained
on exactly the token streams GRPO will see. A checkpoint's `model/` folder is an ordinary Hugging
Face checkpoint: `model.path: OUT/checkpoints/step_000060/model` in a train config starts GRPO from it
(with LoRA, use the merged `OUT/merged_model` written at the end).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rich.console import Console

from agent_grpo import pixels
from agent_grpo.envs.registry import make_env
from agent_grpo.errors import ConfigError
from agent_grpo.models.chat import ChatFormat
from agent_grpo.recipes.grpo import (
    drop_metrics_after,
    lr_lambda,
    memory_metrics,
    resume_point,
    seed_everything,
)
from agent_grpo.rollout import HFEngine, RolloutConfig, RolloutDriver, SamplingParams
from agent_grpo.train.checkpoint import load_training_state, save_checkpoint
from agent_grpo.train.config import EnvConfig, MemoryConfig, ModelConfig, OptimConfig, Seed
from agent_grpo.train.metrics import MetricsLogger, trajectory_metrics
from agent_grpo.train.policy import build_policy, load_weights
from agent_grpo.train.precision import build_optimizer
from agent_grpo.train.progress import StepProgress
from agent_grpo.train.sft_data import SFTDataConfig, load_sft_data
from agent_grpo.train.sft_loss import sft_evaluate, sft_update
from agent_grpo.trajectory import ToolErrorKind, Trajectory


class SFTEvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    every: int = Field(default=0, ge=0, description="steps between evaluations; 0: only at the end")
    rollouts: bool = Field(
        default=True, description="also sample greedily on env.num_eval_tasks tasks of env.eval_split (tool-call rates)"
    )
    max_new_tokens: int = Field(default=128, ge=1, description="per turn, in greedy evaluation rollouts")


class SFTConfig(BaseModel):
    """`agent-grpo sft CONFIG.yaml`: everything an SFT warm start needs.

    `env` gives the tool schemas and visual budget demonstrations are rendered with (those GRPO will
    use), the tasks of scripted demonstrations (`num_train_tasks` of `train_split`, held out:
    `num_eval_tasks` of `eval_split`; None: the whole split) and the tasks of greedy evaluation
    rollouts. `env.reward_weights` apply to the demonstrations' rewards (`data.min_reward`).
    """

    model_config = ConfigDict(extra="forbid")

    out_dir: Path = Path("runs/sft")
    seed: Seed = 0
    steps: int = Field(default=100, ge=1, description="optimizer steps")
    batch_size: int = Field(default=8, ge=1, description="demonstrations (trajectories) per optimizer step")
    save_every: int = Field(default=50, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1)
    model: ModelConfig = Field(default_factory=ModelConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    data: SFTDataConfig = Field(default_factory=SFTDataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    eval: SFTEvalConfig = Field(default_factory=SFTEvalConfig)
    tensorboard: bool = True
    wandb: bool = Field(default=False, description="also log to Weights & Biases (must be installed)")
    memory: MemoryConfig = Field(default_factory=MemoryConfig)

    @model_validator(mode="after")
    def _check(self) -> SFTConfig:
        if self.save_every > self.steps:
            self.save_every = self.steps  # always save at the end
        if self.model.dtype != "float32" and self.model.path == "tiny":
            raise ValueError("the tiny model trains in float32 on CPU; set model.dtype: float32")
        if self.eval.max_new_tokens >= self.data.max_total_tokens:
            raise ValueError(
                f"eval.max_new_tokens ({self.eval.max_new_tokens}) must be below data.max_total_tokens "
                f"({self.data.max_total_tokens})"
            )
        return self


_MALFORMED = (ToolErrorKind.PARSE, ToolErrorKind.UNKNOWN_TOOL, ToolErrorKind.INVALID_ARGUMENTS)


def first_call_quality(traj: Trajectory) -> tuple[bool, bool]:
    """(well formed, ran): the first turn calls a tool, every call in it is parsable JSON naming a
    known tool with schema-valid arguments; and every call also ran without error (e.g. a sound box)."""
    first = traj.turns[0] if traj.turns else None
    if first is None or not first.tool_calls or not first.results:
        return False, False
    well_formed = all(r.error_kind not in _MALFORMED for r in first.results)
    return well_formed, well_formed and all(r.ok for r in first.results)


class SFTRecipe:
    def __init__(self, cfg: SFTConfig, console: Console | None = None, progress: bool = True, log_every: int = 1):
        self.cfg = cfg
        self.console = console or Console()
        self.show_progress = progress  # a live bar on a terminal; else a log line every `log_every` steps
        self.log_every = log_every
        self.merged_path: Path | None = None  # with LoRA, the merged checkpoint written after training
        self.env = self.logger = None  # set by setup(); cleanup() also runs after a setup that failed
        seed_everything(cfg.seed)

    # ---- setup ---------------------------------------------------------------------------------

    def setup(self) -> None:
        cfg = self.cfg
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        (cfg.out_dir / "config.json").write_text(cfg.model_dump_json(indent=2))
        device = "cuda" if torch.cuda.is_available() else "cpu"  # one process; `accelerate launch` is GRPO's
        self.model, self.processor = build_policy(cfg.model, seed=cfg.seed, device=device)
        self.model.eval()
        self.chat = ChatFormat(self.processor)
        pixels.configure(cfg.memory.decoded_images_mb, cfg.memory.model_views_mb)
        self.env = make_env(cfg.env.name, allow_tools=cfg.env.allow_tools, **cfg.env.options)
        if cfg.env.reward_weights:
            self.env.rubric = self.env.rubric.with_weights(**cfg.env.reward_weights)
        self.data = load_sft_data(
            cfg.data, self.env, self.chat, train_split=cfg.env.train_split, eval_split=cfg.env.eval_split,
            num_train_tasks=cfg.env.num_train_tasks, num_eval_tasks=cfg.env.num_eval_tasks, seed=cfg.seed,
        )
        summary = self.data.summary()
        (cfg.out_dir / "sft_data.json").write_text(json.dumps(summary, indent=2) + "\n")
        self.console.print(f"demonstrations: {summary['train']} for training ({summary['train_trained_tokens']} trained "
                           f"tokens), {summary['eval']} held out; details in {cfg.out_dir / 'sft_data.json'}")
        for note in self.data.notes:
            self.console.print(f"[yellow]note:[/] {note}")
        if len(self.data.train) < cfg.batch_size:
            raise ConfigError(
                f"only {len(self.data.train)} demonstrations are left after filtering, fewer than batch_size="
                f"{cfg.batch_size}; lower batch_size, add tasks (env.num_train_tasks) or relax the data filters"
            )
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(trainable, cfg.optim, cfg.model)
        # sft_update makes one optimizer pass per step, so the schedule is laid out in passes = steps.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, passes_per_step=1))
        self.step = 0
        self.data_position = 0  # demonstrations consumed so far, across epochs
        ckpt = resume_point(cfg.out_dir, self.console)
        if ckpt is not None:
            load_weights(self.model, ckpt / "model")
            state = load_training_state(ckpt, self.optimizer, self.scheduler)
            self.step, self.data_position = state["step"], state["data_position"]
            self.console.print(f"resumed from {ckpt} (step {self.step})")
        drop_metrics_after(cfg.out_dir / "metrics.jsonl", self.step)  # the steps after it (all, without one) are redone
        self.logger = MetricsLogger(cfg.out_dir, tensorboard=cfg.tensorboard, wandb=cfg.wandb)

    # ---- data ----------------------------------------------------------------------------------

    def next_batch(self) -> list[Trajectory]:
        """The next `batch_size` demonstrations of a per-epoch seeded shuffle; resumable from `data_position`."""
        n = len(self.data.train)
        out = []
        for _ in range(self.cfg.batch_size):
            epoch, index = divmod(self.data_position, n)
            order = np.random.default_rng((self.cfg.seed, epoch)).permutation(n)
            out.append(self.data.train[int(order[index])])
            self.data_position += 1
        return out

    # ---- train ---------------------------------------------------------------------------------

    def train(self) -> None:
        cfg = self.cfg
        with StepProgress("SFT", cfg.steps, self.step, self.console, bar=self.show_progress,
                          log_every=self.log_every) as bar:
            while self.step < cfg.steps:
                metrics = sft_update(
                    self.model, self.optimizer, self.scheduler, self.next_batch(), self.chat, self.env.budget,
                    micro_batch_tokens=cfg.optim.micro_batch_tokens, max_grad_norm=cfg.optim.max_grad_norm,
                    packing=cfg.optim.packing, head_chunk_tokens=cfg.optim.head_chunk_tokens,
                )
                self.step += 1
                metrics["epoch"] = self.data_position / len(self.data.train)
                metrics.update(memory_metrics())
                self.logger.log(self.step, metrics)
                if self.step % cfg.save_every == 0 or self.step == cfg.steps:
                    self.save()
                if (cfg.eval.every and self.step % cfg.eval.every == 0) or self.step == cfg.steps:
                    metrics.update(self.evaluate())
                    self.logger.log(self.step, {k: v for k, v in metrics.items() if k.startswith("eval/")})
                info = f"loss {metrics['loss']:.3f} acc {metrics['token_accuracy']:.2f}"
                if "eval/loss" in metrics:
                    info += f" eval loss {metrics['eval/loss']:.3f}"
                bar.update(self.step, info=info)
        self.merged_path = self.export_merged()

    def evaluate(self) -> dict[str, float]:
        """Held-out loss and token accuracy; with `eval.rollouts`, greedy rollouts' tool-call rates."""
        cfg = self.cfg
        out: dict[str, float] = {}
        if self.data.eval:
            held = sft_evaluate(self.model, self.data.eval, self.chat, self.env.budget,
                                micro_batch_tokens=cfg.optim.micro_batch_tokens, packing=cfg.optim.packing,
                                head_chunk_tokens=cfg.optim.head_chunk_tokens)
            out.update({f"eval/{k}": v for k, v in held.items()})
        if cfg.eval.rollouts:
            tasks = self.env.load_tasks(cfg.env.eval_split, n=cfg.env.num_eval_tasks, seed=cfg.seed)
            rollout = RolloutConfig(group_size=1, max_total_tokens=cfg.data.max_total_tokens,
                                    sampling=SamplingParams(greedy=True, max_new_tokens=cfg.eval.max_new_tokens))
            engine = HFEngine(self.model, self.chat, image_cache_mb=cfg.memory.engine_image_cache_mb)
            driver = RolloutDriver(self.env, engine, self.chat, rollout)
            trajs = driver.rollout(list(tasks), tag=f"eval{self.step}-")
            out.update(trajectory_metrics(trajs, prefix="eval/"))
            quality = [first_call_quality(t) for t in trajs]
            out["eval/first_call_well_formed"] = sum(q[0] for q in quality) / max(len(trajs), 1)
            out["eval/first_call_ran"] = sum(q[1] for q in quality) / max(len(trajs), 1)
        return out

    def save(self) -> None:
        save_checkpoint(
            self.cfg.out_dir, self.step, self.model, self.processor, self.optimizer, self.scheduler,
            extra={"data_position": self.data_position, "recipe": "sft"}, keep=self.cfg.keep_checkpoints,
        )

    def export_merged(self) -> Path | None:
        """With LoRA: the adapters merged into a full checkpoint GRPO can start from (`model.path`)."""
        if not self.cfg.model.lora:
            return None
        out = self.cfg.out_dir / "merged_model"
        merged = self.model.merge_and_unload()
        merged.save_pretrained(out, safe_serialization=True)
        self.processor.save_pretrained(out)
        self.model = merged
        return out

    def cleanup(self) -> None:
        if self.logger is not None:
            self.logger.close()
        if self.env is not None:
            self.env.shutdown()
