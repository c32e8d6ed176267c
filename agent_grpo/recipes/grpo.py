"""The GRPO recipe behind `agent-grpo train CONFIG.yaml`. Read it top to bottom:

    recipe = GRPORecipe(cfg)     # validated config, seeds
    recipe.setup()               # accelerator, policy, environment, engine, optimizer, store, logger; resume
    recipe.train()               # rollout -> advantages -> update -> log -> checkpoint, per step
    recipe.cleanup()

The Hugging Face engine generates with the very module being trained, so weights never need syncing;
the vLLM engine (`rollout.engine: vllm`) holds its own copy and receives the full weights (LoRA merged)
through `VLLMEngine.sync_weights` after each optimizer step; with `rollout.engine: vllm-server` the same
engine runs in `agent-grpo serve-engine` and `ServerEngine.sync_weights` pushes the weights to it.

Several processes (`accelerate launch`, DDP; docs/scaling.md): every process holds the whole model,
rolls out `tasks_per_step / num_processes` tasks with the bare (unwrapped) model and trains on them;
gradients are averaged in the update. The trajectories are gathered so that the main process alone
writes the trajectory store, the metrics and the checkpoints. Resuming restores weights, optimizer,
scheduler, RNG states and the data position, so a resumed run reproduces an uninterrupted one.

FSDP (`train/fsdp.py`): the trained module is sharded; each process rolls out with a full-weight copy
(`self.policy`) that is refreshed after every update and is also what checkpoints save.

Pipelining (`rollout.max_staleness: 1`, `prefetch.py`): step k+1's rollout runs on a background thread
while step k's update runs, with the weights before that update (the HF engine then generates with a
copy of the policy, refreshed at each step boundary); it is joined, and the weights synced, at the step
boundary. Each trajectory records the policy version that sampled it.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import random
import resource
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object
from rich.console import Console

from agent_grpo import pixels
from agent_grpo.envs.registry import make_env
from agent_grpo.errors import ConfigError
from agent_grpo.models.chat import ChatFormat
from agent_grpo.recipes.prefetch import (
    Prefetch,
    Rollout,
    check_pipelining,
    drop_pending,
    load_pending,
    store_pending,
)
from agent_grpo.rollout import HFEngine, RolloutConfig, RolloutDriver
from agent_grpo.store import ImagePolicy, RunMeta, RunStore
from agent_grpo.train.advantages import scored_advantages, select_groups
from agent_grpo.train.checkpoint import (
    full_optimizer_state_dict,
    load_training_state,
    resume_checkpoint,
    save_checkpoint,
)
from agent_grpo.train.config import TrainConfig
from agent_grpo.train.fsdp import check_fsdp, copy_full_weights, fsdp_plugin, shard_model
from agent_grpo.train.metrics import InstabilityMonitor, MetricsLogger, read_metrics, trajectory_metrics
from agent_grpo.train.policy import build_policy, load_weights, reference_model
from agent_grpo.train.precision import build_optimizer
from agent_grpo.train.progress import StepProgress
from agent_grpo.train.step import grpo_update
from agent_grpo.trajectory import Task, Trajectory


def memory_metrics(engine=None) -> dict[str, float]:
    """Resident memory of this process and what the image caches hold (MiB), for each step's metrics.
    `peak_rss_mb` is the kernel's high-water mark so far: it catches the peak inside a step (the backward),
    which the RSS sampled at the step's end misses."""
    out = {"memory/rss_mb": psutil.Process().memory_info().rss / 2**20,
           "memory/peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10,  # Linux: KiB
           **pixels.cache_metrics()}
    if engine is not None and hasattr(engine, "cache_metrics"):
        out.update(engine.cache_metrics())
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_lambda(cfg, passes_per_step: int = 1):
    """`LambdaLR` factor by optimizer pass, for a schedule laid out in training steps.

    `optim.warmup_steps` and `steps` count training steps. The scheduler is stepped after every
    optimizer pass and a training step makes `passes_per_step` of them (GRPO: `loss.num_iterations`),
    so pass `i` belongs to training step `i // passes_per_step`, and every pass of a step trains at that
    step's rate. Laid out in passes instead, `num_iterations: 2` would halve the warm-up and train the
    second half of the run at lr 0.
    """
    if passes_per_step < 1:
        raise ValueError(f"passes_per_step must be >= 1, got {passes_per_step}")
    warmup, total, kind = cfg.optim.warmup_steps, cfg.steps, cfg.optim.schedule

    def factor(optimizer_pass: int) -> float:
        step = optimizer_pass // passes_per_step
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if kind == "linear":
            return max(0.0, 1 - progress)
        return 1.0

    return factor


def lr_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The GRPO run's schedule; `grpo_update` steps it after each of its `loss.num_iterations` passes."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, passes_per_step=cfg.loss.num_iterations))


def check_processes(cfg: TrainConfig, accelerator: Accelerator) -> None:
    """What `accelerate launch` must agree with; checked before any model is loaded."""
    # On CPU accelerate runs a DeepSpeed launch as DDP without a word: read the launcher's variable too.
    if accelerator.distributed_type == DistributedType.DEEPSPEED or (
        os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    ):
        raise ConfigError(
            "GRPORecipe does not support DeepSpeed: it steps its optimizer inside `backward` and partitions "
            "the optimizer state, which the recipe's token-budget micro-batches and no-pickle checkpoints "
            "do not fit. Launch with FSDP instead (examples/accelerate/fsdp_gpu.yaml): "
            "fsdp_reshard_after_forward true is the ZeRO-3 equivalent, false the ZeRO-2 one; see docs/scaling.md"
        )
    plugin = fsdp_plugin(accelerator)
    if plugin is not None:
        check_fsdp(plugin, accelerator.mixed_precision)
    n = accelerator.num_processes
    if cfg.rollout.tasks_per_step % n:
        raise ConfigError(
            f"rollout.tasks_per_step={cfg.rollout.tasks_per_step} does not split over {n} processes (each process "
            f"rolls out tasks_per_step / num_processes tasks); set rollout.tasks_per_step to a multiple of {n}"
        )


def check_engine(cfg: TrainConfig) -> None:
    """`rollout.engine: vllm` needs vLLM importable (and sleep mode a GPU); checked before any model is loaded.
    `vllm-server` needs vLLM here only for the nccl weight transport (and CUDA)."""
    if cfg.rollout.engine == "vllm-server":
        if cfg.rollout.server.weight_transport == "nccl" and not torch.cuda.is_available():
            raise ConfigError("rollout.server.weight_transport: nccl needs CUDA on the trainer; use file on CPU")
        return
    if cfg.rollout.engine != "vllm":
        return
    from agent_grpo.rollout.vllm_engine import import_vllm

    try:
        import_vllm()
    except ImportError as e:
        raise ConfigError(str(e)) from e
    if cfg.rollout.vllm.sleep_during_update and not torch.cuda.is_available():
        raise ConfigError(
            "rollout.vllm.sleep_during_update: vLLM's sleep mode needs a CUDA device; set it to false on CPU"
        )


def build_engine(cfg: TrainConfig, policy, processor, chat: ChatFormat, max_images: int, is_main: bool = True):
    """The rollout engine the config asks for: HF generates with `policy` itself; vLLM gets a synced copy."""
    if cfg.rollout.engine == "hf":
        return HFEngine(policy, chat, image_cache_mb=cfg.memory.engine_image_cache_mb)
    if cfg.rollout.engine == "vllm-server":  # generation in `agent-grpo serve-engine`, weights pushed to it
        from agent_grpo.rollout.server_engine import ServerEngine

        s = cfg.rollout.server
        # One process pushes the weights; all agree on their version (same run id, same count of pushes).
        run_id = hashlib.blake2b(str(cfg.out_dir.resolve()).encode(), digest_size=4).hexdigest()
        engine = ServerEngine(s, chat, max_images=max_images, weights_dir=s.weights_dir or cfg.out_dir / "engine_weights",
                              run_id=run_id, pushes=is_main)
        engine.sync_weights(policy)
        return engine
    from agent_grpo.rollout.vllm_engine import VLLMEngine

    v = cfg.rollout.vllm
    return VLLMEngine(
        policy, processor, chat, max_images=max_images,
        max_model_len=v.max_model_len or cfg.rollout.max_total_tokens,
        gpu_memory_utilization=v.gpu_memory_utilization, enforce_eager=v.enforce_eager, dtype=v.dtype,
        tensor_parallel_size=v.tensor_parallel_size, cpu_kvcache_gib=v.cpu_kvcache_gib,
        enable_sleep_mode=v.sleep_during_update, sleep_level=v.sleep_level, seed=v.seed,
    )


def drop_metrics_after(path: Path, step: int) -> None:
    """A resumed run repeats the steps after its checkpoint: the rows the stopped run wrote for them
    move to `metrics.superseded.jsonl` (kept, not lost), so metrics.jsonl holds each step once."""
    if path.exists():
        rows = read_metrics(path)
        later = [r for r in rows if r.get("step", 0) > step]
        if not later:
            return
        with path.with_name(path.stem + ".superseded.jsonl").open("a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in later))
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows if r.get("step", 0) <= step))
        tmp.replace(path)


def resume_point(out_dir: Path, console: Console | None) -> Path | None:
    """The newest complete checkpoint; `console` (the main process) is told which were skipped, and why."""
    ckpt, notes = resume_checkpoint(out_dir, clean=console is not None)
    for note in notes if console is not None else ():
        console.print(f"warning: {note}", style="yellow", markup=False, highlight=False)
    return ckpt


def mean_across(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per-key mean of the processes' metric dicts (a key missing on a process is left out there)."""
    keys = dict.fromkeys(k for r in rows for k in r)
    return {k: sum(r[k] for r in rows if k in r) / sum(1 for r in rows if k in r) for k in keys}


class GRPORecipe:
    def __init__(self, cfg: TrainConfig, console: Console | None = None, progress: bool = True, log_every: int = 1):
        self.cfg = cfg
        self.console = console or Console()
        self.show_progress = progress  # a live bar on a terminal; else a log line every `log_every` steps
        self.log_every = log_every
        seed_everything(cfg.seed)

    # ---- setup ---------------------------------------------------------------------------------

    def setup(self) -> None:
        cfg = self.cfg
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        check_processes(cfg, self.accelerator)
        check_engine(cfg)
        check_pipelining(cfg, self.world)
        if self.is_main:
            cfg.out_dir.mkdir(parents=True, exist_ok=True)
            (cfg.out_dir / "config.json").write_text(cfg.model_dump_json(indent=2))
        model, self.processor = build_policy(cfg.model, seed=cfg.seed, device=self.accelerator.device)
        model.eval()
        self.chat = ChatFormat(self.processor)
        self.env = make_env(cfg.env.name, allow_tools=cfg.env.allow_tools, **cfg.env.options)
        if cfg.env.reward_weights:
            self.env.rubric = self.env.rubric.with_weights(**cfg.env.reward_weights)
        self.ref_model = reference_model(model, cfg.model) if cfg.loss.beta > 0 else None
        self.train_tasks = self.env.load_tasks(cfg.env.train_split, n=cfg.env.num_train_tasks, seed=cfg.seed)
        if len(self.train_tasks) < cfg.rollout.tasks_per_step:
            raise ConfigError(
                f"the {cfg.env.train_split} split has {len(self.train_tasks)} tasks, fewer than "
                f"rollout.tasks_per_step={cfg.rollout.tasks_per_step}; lower tasks_per_step or raise env.num_train_tasks"
            )
        self.step = 0
        self.data_position = 0  # tasks consumed so far, across epochs and processes
        ckpt = resume_point(cfg.out_dir, self.console if self.is_main else None)
        if ckpt is not None:  # into the bare model: every process reads the same checkpoint
            load_weights(model, ckpt / "model")
        plugin = fsdp_plugin(self.accelerator)
        # Even for a single launched process: accelerate's own FSDP `prepare` must not shard the model.
        self.fsdp = plugin is not None and torch.distributed.is_initialized()
        if self.fsdp:  # rollouts and checkpoints use a full copy (`self.policy`), the update the shards
            self.policy = copy.deepcopy(model)
            if cfg.rollout.engine == "vllm":  # vLLM generates from its own copy: this one only saves checkpoints
                self.policy.to("cpu")
            model = shard_model(model, plugin)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = build_optimizer(trainable, cfg.optim, cfg.model, self.accelerator.num_processes)
        self.scheduler = lr_scheduler(optimizer, cfg)
        if ckpt is not None:
            sharded = model if self.fsdp else None
            state = load_training_state(ckpt, optimizer, self.scheduler, sharded_model=sharded)
            self.step, self.data_position = state["step"], state["data_position"]
            if self.is_main:
                self.console.print(f"resumed from {ckpt} (step {self.step})")
        if self.is_main:  # the steps after the checkpoint (all, without one) are redone: never stored twice
            drop_metrics_after(cfg.out_dir / "metrics.jsonl", self.step)
        if self.fsdp:
            self.model, self.optimizer = model, optimizer
        else:
            # DDP wraps the model for the update; rollouts and checkpoints use the bare one (`self.policy`).
            # The scheduler stays on the bare optimizer: accelerate's would step once per process.
            self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
            self.policy = self.accelerator.unwrap_model(self.model)
        pixels.configure(cfg.memory.decoded_images_mb, cfg.memory.model_views_mb)
        # ---- pipelining (rollout.max_staleness): the HF engine generates with a copy while the policy trains ----
        self.rollout_policy = self.policy
        if cfg.rollout.max_staleness and cfg.rollout.engine == "hf" and not self.fsdp:
            self.rollout_policy = copy.deepcopy(self.policy).eval()
        self.prefetched: Rollout | None = None  # the next step's rollout, sampled during this step's update
        if cfg.rollout.max_staleness:
            self.prefetched = load_pending(cfg.out_dir, self.step + 1)
            if self.prefetched is not None and self.is_main:
                self.console.print(f"step {self.step + 1}'s rollout, sampled before the stop, is reused")
        # ---- end pipelining ----
        self.engine = build_engine(cfg, self.rollout_policy, self.processor, self.chat, self.env.budget.max_images,
                                   self.is_main)
        rollout = RolloutConfig(
            group_size=cfg.rollout.group_size, max_total_tokens=cfg.rollout.max_total_tokens,
            sampling=cfg.rollout.sampling, schedule=cfg.rollout.schedule, env_threads=cfg.rollout.env_threads,
            turn_timeout_s=cfg.rollout.turn_timeout_s,
        )
        self.driver = RolloutDriver(self.env, self.engine, self.chat, rollout)
        self.store = self.logger = None
        # Trajectories are stored with the 1-based step of metrics and checkpoints; a run begun before that
        # (no `first_step` in its meta.json) keeps its 0-based numbering when resumed, so its ids stay unique.
        meta_path = cfg.out_dir / "trajectories" / "meta.json"
        self.first_step = RunMeta.load(meta_path).extra.get("first_step", 0) if meta_path.exists() else 1
        if self.is_main:
            images = None if cfg.store_images else ImagePolicy(max_bytes=0, sample_every=0)
            self.store = RunStore.create(
                cfg.out_dir / "trajectories",
                meta=RunMeta.from_env(self.env, recipe="grpo", seed=cfg.seed, first_step=1),  # steps count from 1
                images=images,
            )
            # The first redone step is checkpoint `self.step` + 1, stored as `self.step + first_step`.
            if moved := self.store.supersede_from(self.step + self.first_step):
                self.console.print(f"{moved} stored trajectories of the redone steps moved to "
                                   f"{self.store.path / 'superseded'}", markup=False, highlight=False)
            self.logger = MetricsLogger(cfg.out_dir, tensorboard=cfg.tensorboard, wandb=cfg.wandb)
        self.monitor = InstabilityMonitor()

    # ---- data ----------------------------------------------------------------------------------

    def next_tasks(self, count: int) -> list[Task]:
        """The next `count` tasks of a per-epoch seeded shuffle; resumable from `data_position`.

        Every process draws the same tasks (and keeps its share), so positions agree across processes."""
        n = len(self.train_tasks)
        out = []
        for _ in range(count):
            epoch, index = divmod(self.data_position, n)
            order = np.random.default_rng((self.cfg.seed, epoch)).permutation(n)
            out.append(self.train_tasks[int(order[index])])
            self.data_position += 1
        return out

    def my_share(self, tasks: list[Task]) -> list[Task]:
        k = len(tasks) // self.world
        return tasks[self.rank * k : (self.rank + 1) * k]

    def rollout_tasks(self, tasks: list[Task], step: int, seed: int, tag: str) -> list[Trajectory]:
        """G trajectories per task. A task drawn twice in one step (an epoch boundary of a small split)
        is rolled out in a further call with its own tag, so trajectory ids stay unique."""
        out: list[Trajectory] = []
        pending, k = list(tasks), 0
        while pending:
            now, later, seen = [], [], set()
            for t in pending:
                (later if t.id in seen else now).append(t)
                seen.add(t.id)
            out += self.driver.rollout(now, step=step, seed=seed + k, tag=tag if k == 0 else f"{tag[:-1]}d{k}-")
            pending, k = later, k + 1
        return out

    # ---- train ---------------------------------------------------------------------------------

    def rollout_step(self, step: int) -> tuple[list, list, dict[str, float]]:
        """Sample this process's groups for step `step` (1-based, as metrics and checkpoints count); with
        dynamic sampling, refill zero-variance groups.

        Returns (every trajectory sampled, the ones trained on with `advantage` set, metrics)."""
        cfg = self.cfg
        G, share = cfg.rollout.group_size, cfg.rollout.tasks_per_step // self.world
        seed = cfg.seed * 100_003 + (step - 1) + 104_729 * self.rank  # processes sample independently
        stored = step - 1 + self.first_step  # the step number stored with the trajectories (see setup)
        tasks = self.my_share(self.next_tasks(cfg.rollout.tasks_per_step))
        trajs = self.rollout_tasks(tasks, stored, seed, f"s{stored}-")
        groups = [trajs[i : i + G] for i in range(0, len(trajs), G)]
        sampled = list(groups)
        info = {"zero_variance_groups": sum(1 for g in groups if len({t.reward for t in g}) == 1) / len(groups)}
        if cfg.rollout.dynamic_sampling:
            selection = select_groups(sampled, share)
            for r in range(cfg.rollout.max_refill_rounds):
                # Processes refill together (same draws, same data position); each rolls out what it lacks.
                needed = int(self.accelerator.gather(torch.tensor([selection.needed], device=self.accelerator.device)).max())
                if needed == 0:
                    break
                tasks = self.my_share(self.next_tasks(needed * self.world))[: selection.needed]
                more = self.rollout_tasks(tasks, stored, seed + 7919 * (r + 1), f"s{stored}r{r + 1}-") if tasks else []
                sampled += [more[i : i + G] for i in range(0, len(more), G)]
                selection = select_groups(sampled, share)
            groups = selection.groups or groups  # all flat: train on nothing new rather than stall
            info["refill_groups"] = float(len(sampled) - len(trajs) // G)
        all_sampled = [t for g in sampled for t in g]
        kept = [t for g in groups for t in g]
        adv = scored_advantages(kept, [t.group_id for t in kept], scale=cfg.loss.scale_rewards)
        for t, a in zip(kept, adv, strict=True):
            t.advantage = a
        return all_sampled, kept, info

    def sample(self, step: int, policy_version: int) -> Rollout:
        """`rollout_step` with each trajectory stamped with the policy version (updates applied) that sampled it."""
        t0 = time.perf_counter()
        all_sampled, kept, info = self.rollout_step(step)
        for t in all_sampled:
            t.policy_version = policy_version
        return Rollout(sampled=all_sampled, kept=kept, info=info, gen_s=time.perf_counter() - t0)

    def train(self) -> None:
        cfg = self.cfg
        with StepProgress("GRPO", cfg.steps, self.step, self.console, bar=self.show_progress,
                          log_every=self.log_every, enabled=self.is_main) as bar:
            while self.step < cfg.steps:
                step = self.step + 1  # the step being made, counted from 1 like metrics and checkpoints
                t0 = time.perf_counter()
                # ---- pipelining: this step's rollout may have been sampled during the previous update ----
                batch, self.prefetched = self.prefetched or self.sample(step, self.step), None
                all_sampled, kept, info = batch.sampled, batch.kept, batch.info
                background = None
                if cfg.rollout.max_staleness and step < cfg.steps:  # the next step's, with the weights of now
                    background = Prefetch(functools.partial(self.sample, step + 1, self.step))
                # ---- end pipelining ----
                t1 = time.perf_counter()
                if cfg.rollout.engine == "vllm" and cfg.rollout.vllm.sleep_during_update:
                    self.engine.sleep()  # frees the KV cache (and offloads the engine's weights) for the update
                update = grpo_update(
                    self.model, self.optimizer, self.scheduler, kept, self.chat, self.env.budget, cfg.loss,
                    temperature=cfg.rollout.sampling.temperature, micro_batch_tokens=cfg.optim.micro_batch_tokens,
                    max_grad_norm=cfg.optim.max_grad_norm, ref_model=self.ref_model, accelerator=self.accelerator,
                    max_completion_length=cfg.rollout.sampling.max_new_tokens * self.env.budget.max_turns,
                    packing=cfg.optim.packing, head_chunk_tokens=cfg.optim.head_chunk_tokens,
                )
                # ---- pipelining: the step boundary (the next rollout is done before any weight moves) ----
                t_update = time.perf_counter()
                if background is not None:
                    self.prefetched = background.result()
                prefetch_wait_s = time.perf_counter() - t_update
                if self.rollout_policy is not self.policy:
                    self.rollout_policy.load_state_dict(self.policy.state_dict())
                # ---- end pipelining ----
                if self.fsdp:  # the next rollout samples from the new weights
                    copy_full_weights(self.model, self.policy)
                if cfg.rollout.engine in ("vllm", "vllm-server"):  # the engine holds its own copy of the weights
                    if cfg.rollout.engine == "vllm" and cfg.rollout.vllm.sleep_during_update:
                        self.engine.wake_up()
                    # Under FSDP straight from the shards, one gathered weight at a time (`full_weights`).
                    self.engine.sync_weights(self.model if self.fsdp else self.policy)
                t2 = time.perf_counter()
                everyone = gather_object(all_sampled)  # every process's trajectories, in process order
                info = mean_across(gather_object([info]))
                update = mean_across(gather_object([update]))
                self.step += 1
                metrics = {**trajectory_metrics(everyone), **info, **update,
                           "time/rollout_s": t1 - t0, "time/update_s": t2 - t1}
                metrics["time/tools_s"] = sum(t.metrics.get("time_env_s", 0.0) for t in everyone)
                # ---- pipelining metrics ----
                metrics["staleness"] = sum(step - 1 - t.policy_version for t in kept) / max(1, len(kept))
                metrics["time/rollout_gen_s"] = batch.gen_s  # generation itself (in the background when prefetched)
                metrics["time/prefetch_wait_s"] = prefetch_wait_s  # the update waiting for the next rollout
                metrics["time/step_s"] = time.perf_counter() - t0
                # ---- end pipelining metrics ----
                metrics.update(memory_metrics(self.engine))
                if self.is_main:
                    # A resumed run repeats the steps after its checkpoint; the stopped run may have stored them.
                    self.store.extend(t for t in everyone if t.id not in self.store)
                    self.logger.log(self.step, metrics)
                    for warning in self.monitor.check(metrics):
                        bar.print(f"[yellow]warning:[/] {warning}")
                if self.step % cfg.save_every == 0 or self.step == cfg.steps:
                    if self.prefetched is not None and self.is_main:  # pipelining: resumable only with it
                        store_pending(cfg.out_dir, self.step + 1, self.prefetched)
                    self.save()
                    if self.is_main:
                        drop_pending(cfg.out_dir, self.step)
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or self.step == cfg.steps:
                    evaluation = self.evaluate()
                    if self.is_main:
                        self.logger.log(self.step, evaluation)
                bar.update(self.step,
                           info=f"reward {metrics['reward']:.2f} acc {metrics.get('reward/accuracy', float('nan')):.2f} "
                                f"calls {metrics['tool_calls_per_traj']:.1f}")

    def save(self) -> None:
        # FSDP: every process takes part in gathering the optimizer state; the weights are in `self.policy`.
        optimizer = full_optimizer_state_dict(self.model, self.optimizer) if self.fsdp else self.optimizer
        if self.is_main:
            save_checkpoint(
                self.cfg.out_dir, self.step, self.policy, self.processor, optimizer, self.scheduler,
                extra={"data_position": self.data_position}, keep=self.cfg.keep_checkpoints,
            )
        self.accelerator.wait_for_everyone()

    def evaluate(self) -> dict[str, float]:
        """Greedy, one trajectory per held-out task (split over processes); metrics prefixed `eval/`."""
        cfg = self.cfg
        tasks = list(self.env.load_tasks(cfg.env.eval_split, n=cfg.env.num_eval_tasks, seed=cfg.seed))
        rollout = RolloutConfig(
            group_size=1, max_total_tokens=cfg.rollout.max_total_tokens,
            sampling=cfg.rollout.sampling.model_copy(update={"greedy": True}),
        )
        mine = tasks[self.rank :: self.world]
        trajs = RolloutDriver(self.env, self.engine, self.chat, rollout).rollout(mine, tag=f"eval{self.step}-")
        return trajectory_metrics(gather_object(trajs), prefix="eval/")

    def cleanup(self) -> None:
        if self.cfg.rollout.engine == "vllm-server" and getattr(self, "engine", None) is not None:
            self.engine.close()  # removes its last weights file
        if self.store is not None:
            self.store.close()
        if self.logger is not None:
            self.logger.close()
        self.env.shutdown()
        self.accelerator.end_training()
