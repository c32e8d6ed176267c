"""The proof-of-learning pipeline behind `agent-grpo demo`: eval -> SFT -> eval -> GRPO -> eval.

    pipeline = Pipeline(load_pipeline_config(demo_config()))   # a demo an installed package ships (recipes/demos.py)
    pipeline.run()        # every stage in order; a finished stage is reused when the run is resumed

Starting from a checkpoint that can see but has never acted (the perception-pretrained tiny VLM of
a demo's environment), the SFT warm start teaches the tool protocol from deliberately imperfect scripted
demonstrations, and GRPO teaches the rest from rewards. The same held-out tasks are evaluated after
each stage (greedy, one trajectory per task). Everything lands in `out_dir`:

    results.md / results.json      one row per stage (accuracy with 95% CI, calls, zoom IoU, ...)
    curves_grpo.png, curves_sft.png   training curves
    sft/, grpo/                    the recipes' own run folders (metrics.jsonl, checkpoints, trajectories)
    eval_<stage>/                  each evaluation's trajectories (`agent-grpo replay html eval_grpo`)
    report.html                    image chains of the final evaluation
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console

from agent_grpo import pixels
from agent_grpo.envs.registry import make_env
from agent_grpo.evaluate import EvalResult, evaluate_policy, results_table, write_results
from agent_grpo.models.chat import ChatFormat
from agent_grpo.plots import plot_curves
from agent_grpo.recipes.grpo import GRPORecipe
from agent_grpo.recipes.sft import SFTConfig, SFTRecipe
from agent_grpo.train.checkpoint import checkpoint_step, latest_checkpoint
from agent_grpo.train.config import ModelConfig, TrainConfig, load_config


class PipelineEval(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: str = "test"
    n: int = Field(default=200, ge=1, description="held-out tasks, the same ones after every stage")
    seed: int = Field(default=0, description="task seed of the split")
    max_new_tokens: int = Field(default=96, ge=1)
    max_total_tokens: int = Field(default=1024, ge=16)


class PipelineConfig(BaseModel):
    """`agent-grpo demo --config FILE`: the stages' configs and where they start from."""

    model_config = ConfigDict(extra="forbid")

    out_dir: Path = Path("runs/demo")
    start: str = Field(description="checkpoint the SFT stage starts from (relative: to the config file)")
    env_options: dict = Field(default_factory=dict, description="environment options used by every stage")
    eval: PipelineEval = Field(default_factory=PipelineEval)
    sft: SFTConfig
    grpo: TrainConfig
    skip_sft: bool = Field(default=False, description="GRPO straight from `start` (an ablation)")
    torch_threads: int = Field(
        default=1,
        ge=1,
        description="torch intra-op threads for every stage. Results depend slightly on the count (summation"
        " order), so a config that records results names it; more threads than free cores is much slower",
    )


def load_pipeline_config(path: Path, overrides: list[str] = ()) -> PipelineConfig:
    cfg = load_config(path, overrides, model=PipelineConfig)
    start = Path(cfg.start)
    if not start.is_absolute() and not start.exists() and (Path(path).parent / start).exists():
        cfg.start = str((Path(path).parent / start).resolve())
    return cfg


def set_torch_threads(n: int, console=None) -> None:
    """Use `n` torch threads: a fixed count (not "all cores") keeps a run's numbers the same on any machine."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if n > cpus and console is not None:
        console.print(
            f"[yellow]torch_threads={n} but this process may use {cpus} CPU(s): the run will be slower; its"
            " numbers stay those of the config[/yellow]"
        )
    torch.set_num_threads(n)


class Pipeline:
    def __init__(self, cfg: PipelineConfig, console: Console | None = None, progress: bool = True, log_every: int = 1):
        self.cfg = cfg
        self.console = console or Console()
        self.progress = progress
        self.log_every = log_every  # without a live bar: a log line every this many training steps
        self.results: list[EvalResult] = []

    # ---- stages --------------------------------------------------------------------------------

    def evaluate(self, name: str, label: str, checkpoint: str) -> EvalResult:
        """Greedy evaluation of `checkpoint` on the held-out split; cached in eval_<name>/result.json."""
        from agent_grpo.store import RunMeta, RunStore
        from agent_grpo.train.policy import build_policy

        cfg, out = self.cfg, self.cfg.out_dir / f"eval_{name}"
        cached = out / "result.json"
        if cached.exists():
            return EvalResult.model_validate_json(cached.read_text())
        self.console.print(f"[bold]evaluate[/] {label}: {cfg.eval.n} held-out tasks ({checkpoint})")
        # The stage before filled the image caches with its own images: start empty, within the GRPO stage's limits.
        pixels.DECODED.clear()
        pixels.VIEWS.clear()
        memory = cfg.grpo.memory
        pixels.configure(memory.decoded_images_mb, memory.model_views_mb)
        model, processor = build_policy(ModelConfig(path=checkpoint), seed=0)
        env = make_env(cfg.grpo.env.name, allow_tools=cfg.grpo.env.allow_tools, **cfg.env_options)
        if cfg.grpo.env.reward_weights:
            env.rubric = env.rubric.with_weights(**cfg.grpo.env.reward_weights)
        try:
            result, trajs = evaluate_policy(
                model, ChatFormat(processor), env, name=label, split=cfg.eval.split, n=cfg.eval.n,
                seed=cfg.eval.seed, max_new_tokens=cfg.eval.max_new_tokens, max_total_tokens=cfg.eval.max_total_tokens,
                image_cache_mb=memory.engine_image_cache_mb,
            )
        finally:
            env.shutdown()
        if (out / "trajectories").exists():  # a stage killed mid-write: redo it whole
            shutil.rmtree(out / "trajectories")
        out.mkdir(parents=True, exist_ok=True)
        with RunStore.create(out / "trajectories", meta=RunMeta.from_env(env, recipe="eval", checkpoint=checkpoint)) as store:
            store.extend(trajs)
        tmp = cached.with_suffix(".tmp")
        tmp.write_text(result.model_dump_json(indent=2))
        tmp.replace(cached)  # written last: its presence means the stage is complete
        self.console.print(f"  accuracy {result.accuracy:.1%} ({result.ci_low:.1%}-{result.ci_high:.1%}), "
                           f"{result.calls_per_traj:.2f} calls / trajectory")
        return result

    def train(self, name: str, stage: SFTConfig | TrainConfig, recipe_cls, start: str) -> str:
        """Run one training stage (SFT or GRPO) from checkpoint `start` in `out_dir/name`, unless its
        last checkpoint is already there; returns the folder of that checkpoint's model."""
        stage = stage.model_copy(deep=True)
        stage.out_dir = self.cfg.out_dir / name
        stage.model.path = start
        stage.env.options = {**self.cfg.env_options, **stage.env.options}
        done = latest_checkpoint(stage.out_dir)
        if done is None or checkpoint_step(done) < stage.steps:
            recipe = recipe_cls(stage, console=self.console, progress=self.progress, log_every=self.log_every)
            recipe.setup()
            try:
                recipe.train()
            finally:
                recipe.cleanup()
        return str(latest_checkpoint(stage.out_dir) / "model")

    # ---- the whole run -------------------------------------------------------------------------

    def run(self) -> list[EvalResult]:
        cfg = self.cfg
        set_torch_threads(cfg.torch_threads, self.console)
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        (cfg.out_dir / "config.json").write_text(cfg.model_dump_json(indent=2))
        start = time.time()
        timings: dict[str, float] = {}

        def timed(stage: str, fn, *args):
            t0 = time.time()
            value = fn(*args)
            timings[stage] = round(time.time() - t0, 1)
            return value

        self.results = [timed("eval_start", self.evaluate, "start", "pretrained (no SFT)", cfg.start)]
        policy = cfg.start
        if not cfg.skip_sft:
            policy = timed("sft", self.train, "sft", cfg.sft, SFTRecipe, policy)
            self.results.append(timed("eval_sft", self.evaluate, "sft", "after SFT", policy))
        policy = timed("grpo", self.train, "grpo", cfg.grpo, GRPORecipe, policy)
        self.results.append(timed("eval_grpo", self.evaluate, "grpo", "after GRPO", policy))
        timings["total"] = round(time.time() - start, 1)

        write_results(self.results, cfg.out_dir)
        (cfg.out_dir / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
        self.plots()
        self.report()
        return self.results

    def plots(self) -> list[Path]:
        out = []
        grpo = self.cfg.out_dir / "grpo" / "metrics.jsonl"
        if grpo.exists():
            env = make_env(self.cfg.grpo.env.name, **self.cfg.env_options)
            env.shutdown()
            own = [(c.metric, c.label) for c in env.eval_protocol().columns]  # the environment's own curves
            panels = [("reward", "mean reward"), ("reward/accuracy", "accuracy (train rollouts)"),
                      ("tool_calls_per_traj", "tool calls / trajectory"), *own,
                      ("entropy", "policy entropy (sampled tokens)")]
            out.append(plot_curves({"GRPO": grpo}, panels, self.cfg.out_dir / "curves_grpo.png",
                                   title=f"GRPO on {self.cfg.grpo.env.name} (train rollouts)"))
        sft = self.cfg.out_dir / "sft" / "metrics.jsonl"
        if sft.exists():
            panels = [("loss", "SFT loss"), ("token_accuracy", "token accuracy")]
            out.append(plot_curves({"SFT": sft}, panels, self.cfg.out_dir / "curves_sft.png", title="SFT warm start"))
        return out

    def report(self) -> Path | None:
        from agent_grpo.replay.html import write_report
        from agent_grpo.store import RunStore

        path = self.cfg.out_dir / "eval_grpo" / "trajectories"
        if not path.exists():
            return None
        store = RunStore.open(path)
        rows = store.rows[:32]
        return write_report(store, rows, self.cfg.out_dir / "report.html", title="agent-grpo demo: after GRPO")

    def summary(self) -> str:
        return results_table(self.results)
