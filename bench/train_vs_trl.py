"""Training throughput of our GRPO step versus TRL 1.16's `GRPOTrainer`, in one run (issue 4).

    .venv/bin/python bench/train_vs_trl.py --steps 2 --repeats 8 --json bench/results/train-vs-trl-$(date +%F).json

Goal: tokens/s of ours / tokens/s of TRL >= 1.0 on the same single-turn task, tiny model and batch (CPU).

The task. `visual-search` without tools, one turn: the environment's own prompt (system prompt, then
the 112 px task image and the question), Q tasks x G completions per step. Both sides get the same
messages and the same images; TRL takes our processor (`Qwen2_5_VLImageTextProcessor`, a
`Qwen2_5_VLProcessor`) as `processing_class` and runs its VLM path (an `image` column), so the
training forward sees the image on both sides. Completion k of every group is the same scripted
text of exactly C tokens ("<think> look look ...</think>\\n<answer>k</answer>", ending on the
`</answer>` stop token); the reward is how close the answer digit is to the task's, so every group
has non-zero advantages. Both sides start from identical weights (`build_tiny_model`, seed 0, one copy
each) and use the same optimiser (torch AdamW, lr 1e-5, betas 0.9/0.99, constant schedule, grad clip
1.0) and loss (dapo, eps 0.2/0.28, beta 0, one pass, no importance sampling, no truncation masking).

Two measurements, each a whole optimizer step driven through the real code of each side:

- `train` (the headline): the training step on fixed, pre-generated completions. TRL: `trainer.train()`
  for `--steps` steps with a `rollout_func` that returns the fixed token ids (TRL's public hook; it is
  given the prompts and returns ids instantly), so each step is TRL's own post-generation pipeline:
  decoding, reward function, advantages, chat template + processor for pixel values, padding, then
  `compute_loss` (its fused chunked log-prob head), backward, grad clipping, `optimizer.step`.
  Ours: the same reward on the trajectories' text, `group_advantages`, then `grpo_update` (batch
  assembly with image preprocessing, forward, loss, backward, clipping, step) on trajectories made once
  by `RolloutDriver` with a `ScriptedEngine` of the same completions. Generation is benchmarked
  separately (bench/rollout_overhead.py), so it is kept out of this number.
- `e2e`: the same step with generation. Both sides sample through the real model (`model.generate`,
  KV cache, the tiny model's forward at every position) with a logits processor that forces the
  scripted completion, so both generate exactly the same C tokens per row. TRL: its transformers
  generation path (no `rollout_func`; `model.generate` is wrapped only to add the forcing processor).
  Ours: `RolloutDriver` + `HFEngine` (image cache cleared every step, as with new tasks).

Why TRL's real `train()` rather than its pieces: it runs offline on this CPU with our processor and
model, and the steps are timed from `on_step_begin` to `on_step_end` (a `TrainerCallback`): that
spans `training_step` (input preparation, forward, backward), clipping, the optimizer and scheduler
steps, and excludes only the data loader and logging, which have no counterpart in ours. "before the
forward" is TRL's `_prepare_inputs` and, for ours, rewards + advantages + `assemble_batch` (+ the
rollout in e2e); the rest of the step is "forward+backward+optimizer".

Tokens are counted once, identically for both: the non-padding tokens of the training forward,
rows x (prompt + completion) (there is no padding: every prompt and completion has the same length).
The bench checks that TRL's batch holds exactly those tokens and the same completions, that TRL's
processor gives the same prompt ids and pixel values as ours, and that the two first-step entropies
(identical weights, identical inputs) agree, so both sides compute the same thing.

Timing: one torch thread; blocks of `--steps` steps alternate TRL/ours (AB, BA, ...) after one warm-up
block each (its first steps pay one-time costs). Reported: the median step over all measured steps with
the fastest and slowest step as spread; ours/TRL = TRL's median step / ours (the same tokens on both
sides), with the range of the per-repeat ratios (block medians, paired). CPU time (`time.process_time`)
is reported beside wall time: it is far less sensitive to a busy neighbour.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import datetime as dt
import functools
import io
import json
import os
import platform
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is "experimental" in TRL 1.16

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import LogitsProcessorList, PrinterCallback, TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402
from trl.data_utils import apply_chat_template, prepare_multimodal_messages  # noqa: E402

import agent_grpo.train.step  # noqa: E402
from agent_grpo.envs import make_env  # noqa: E402
from agent_grpo.models.chat import ChatFormat, to_template_messages  # noqa: E402
from agent_grpo.models.tiny import build_tiny_model  # noqa: E402
from agent_grpo.rollout import HFEngine, RolloutConfig, RolloutDriver, SamplingParams  # noqa: E402
from agent_grpo.rollout.scripted import ScriptedEngine  # noqa: E402
from agent_grpo.train import group_advantages  # noqa: E402
from agent_grpo.train.config import LossConfig  # noqa: E402
from agent_grpo.train.step import grpo_update  # noqa: E402

GOAL = 1.0
MODES = ("train", "e2e")
LR, BETAS, EPS_LOW, EPS_HIGH, MAX_GRAD_NORM = 1e-5, (0.9, 0.99), 0.2, 0.28, 1.0


# ---- the task: prompts, fixed completions, reward --------------------------------------------------


def closeness(text: str, answer: str) -> float:
    """1 for the right digit, falling linearly to 0 nine digits away; 0 without an answer."""
    m = re.search(r"<answer>\s*(\d)\s*</answer>", text)
    return 1.0 - abs(int(m.group(1)) - int(answer)) / 9.0 if m else 0.0


def completion_text(k: int, length: int, tokenizer) -> str:
    """The scripted completion of sample k: exactly `length` tokens, ending on the `</answer>` stop."""
    head, tail = "<think>", f"</think>\n<answer>{k % 10}</answer>"
    fixed = len(tokenizer.encode(head + tail, add_special_tokens=False))
    for n in range(max(0, length - fixed - 4), length):
        text = head + " look" * n + tail
        if len(tokenizer.encode(text, add_special_tokens=False)) == length:
            return text
    raise ValueError(f"cannot write a completion of exactly {length} tokens; try another --completion-tokens")


def forcing(rows: list[list[int]], width: int, fill_id: int) -> LogitsProcessorList:
    """Row b emits `rows[b][step]` (then `fill_id`): every other logit becomes -inf (the forward still runs)."""

    def force(input_ids, scores):
        step = input_ids.shape[1] - width
        out = torch.full_like(scores, float("-inf"))
        for b, ids in enumerate(rows):
            out[b, ids[step] if step < len(ids) else fill_id] = 0.0
        return out

    return LogitsProcessorList([force])


@dataclass
class Task:
    """Everything both sides share: model, processor, environment, tasks, prompts and completions."""

    model: torch.nn.Module  # the initial weights; each side trains its own copy
    processor: object
    chat: ChatFormat
    env: object
    tasks: list
    views: list  # the model's view of each task image (what both sides feed the processor)
    prompts: list[list[dict]]  # the environment's opening messages, as template dicts
    completions: list[list[int]]  # [G] token ids of sample k
    trajectories: list  # made once by RolloutDriver + ScriptedEngine: what `train` mode trains on
    group_size: int
    length: int  # C
    tokens_per_step: int = 0
    checks: dict = field(default_factory=dict)


def build_task(args) -> Task:
    model, processor = build_tiny_model(size=args.size, seed=0)
    chat = ChatFormat(processor)
    env = make_env("visual-search", allow_tools=False)
    tasks = equal_length_tasks(env, chat, args.prompts)
    views = [env.budget.view(t.images[0].pil, "task") for t in tasks]
    prompts = []
    for t in tasks:
        ep = env.start(t)
        prompts.append(to_template_messages(ep.trajectory.messages))
    texts = [completion_text(k, args.completion_tokens, processor.tokenizer) for k in range(args.group_size)]
    completions = [processor.tokenizer.encode(s, add_special_tokens=False) for s in texts]
    scripted = ScriptedEngine(lambda r: texts[int(r.key.rsplit("-", 1)[1])], chat)
    driver = RolloutDriver(env, scripted, chat, rollout_config(args))
    trajectories = driver.rollout(tasks)
    task = Task(model, processor, chat, env, tasks, views, prompts, completions, trajectories,
                args.group_size, args.completion_tokens)
    check_task(task)
    return task


def equal_length_tasks(env, chat, n: int) -> list:
    """The first `n` tasks whose prompts all have the same number of tokens (questions differ in length).

    Equal lengths mean no padding on either side, so both count exactly the same tokens.
    """
    candidates = list(env.load_tasks(n=max(40, 10 * n), seed=0))
    by_length: dict[int, list] = {}
    for t in candidates:
        ep = env.start(t)
        text = chat.render_text(ep.trajectory.messages, None, add_generation_prompt=True)
        views = [env.budget.view(img.pil, img.source) for img in ep.images]
        by_length.setdefault(len(chat.encode(text, views)), []).append(t)
        env.close(ep)
    length, same = max(by_length.items(), key=lambda kv: len(kv[1]))
    if len(same) < n:
        raise RuntimeError(f"only {len(same)} of {len(candidates)} tasks share a prompt length ({length}); lower --prompts")
    return same[:n]


def rollout_config(args) -> RolloutConfig:
    return RolloutConfig(
        group_size=args.group_size, max_total_tokens=4096, max_batch_size=args.prompts * args.group_size,
        sampling=SamplingParams(max_new_tokens=args.completion_tokens),
    )


def check_task(task: Task) -> None:
    """Our trajectories are single-turn, C tokens, answered; TRL's processor gives our prompt ids and pixels."""
    for t in task.trajectories:
        kinds = [s.kind for s in t.segments]
        if kinds != ["prompt", "sampled"] or len(t.segments[1].token_ids) != task.length:
            raise RuntimeError(f"trajectory {t.id}: segments {kinds}, expected one prompt and {task.length} sampled tokens")
    rows = {len(t.segments[0].token_ids) for t in task.trajectories}
    if len(rows) != 1:
        raise RuntimeError(f"prompts of different lengths {sorted(rows)}: the token count would include padding")
    for i, (prompt, view) in enumerate(zip(task.prompts, task.views, strict=True)):
        ours = task.trajectories[i * task.group_size].segments[0].token_ids
        messages = prepare_multimodal_messages(prompt, images=[view])  # what TRL does with an `image` column
        text = apply_chat_template({"prompt": messages}, task.processor)["prompt"]
        theirs = task.processor(images=[[view]], text=[text], padding=True, return_tensors="pt")
        if theirs["input_ids"][0].tolist() != ours:
            raise RuntimeError(f"prompt {i}: TRL's chat template + processor give other token ids than ours")
        if not torch.equal(theirs["pixel_values"], task.chat.image_inputs([view])["pixel_values"]):
            raise RuntimeError(f"prompt {i}: TRL's processor gives other pixel values than ours")
    task.tokens_per_step = sum(len(s.token_ids) for t in task.trajectories for s in t.segments)
    task.checks["prompt_tokens"] = len(task.trajectories[0].segments[0].token_ids)
    task.checks["same_prompt_ids_and_pixels"] = True


# ---- timing ----------------------------------------------------------------------------------------


@dataclass
class Step:
    wall: float
    cpu: float
    prep: float  # before the forward: see the module docstring
    entropy: float | None = None


class Clock:
    """Wall and CPU time of a span, and the time spent in `timed` calls inside it."""

    def __init__(self):
        self.prep = 0.0

    def start(self):
        self.prep = 0.0
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def stop(self, entropy=None) -> Step:
        return Step(time.perf_counter() - self.t0, time.process_time() - self.c0, self.prep, entropy)

    def timed(self, fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.prep += time.perf_counter() - t0

        return wrapper


# ---- TRL ---------------------------------------------------------------------------------------------


class StepTimer(TrainerCallback):
    def __init__(self, clock: Clock, trainer_ref: list):
        self.clock, self.trainer_ref, self.steps = clock, trainer_ref, []

    def on_step_begin(self, args, state, control, **kwargs):
        self.clock.start()

    def on_step_end(self, args, state, control, **kwargs):
        entropy = self.trainer_ref[0]._metrics["train"].get("entropy", [None])[-1]
        self.steps.append(self.clock.stop(entropy))


class TRLSide:
    """A real `GRPOTrainer` on a copy of the model; `block(n)` runs `trainer.train()` for n steps."""

    name = "TRL GRPOTrainer"

    def __init__(self, task: Task, mode: str, out_dir: str):
        self.task, self.mode = task, mode
        B, G = len(task.trajectories), task.group_size
        model = copy.deepcopy(task.model)
        dataset = Dataset.from_list(
            [{"prompt": p, "image": v, "answer": t.answer} for p, v, t in zip(task.prompts, task.views, task.tasks, strict=True)]
        )
        config = GRPOConfig(
            output_dir=out_dir, use_cpu=True, bf16=False, report_to=[], disable_tqdm=True, save_strategy="no",
            logging_steps=10**6, seed=0, per_device_train_batch_size=B, num_generations=G,
            max_completion_length=task.length, shuffle_dataset=False, gradient_checkpointing=False,
            optim="adamw_torch", learning_rate=LR, adam_beta1=BETAS[0], adam_beta2=BETAS[1], weight_decay=0.0,
            lr_scheduler_type="constant", max_grad_norm=MAX_GRAD_NORM, loss_type="dapo", beta=0.0,
            epsilon=EPS_LOW, epsilon_high=EPS_HIGH, mask_truncated_completions=False, temperature=1.0,
            # every row stops on the same step, on `</answer>`, as our engine does
            generation_kwargs={"eos_token_id": sorted(task.chat.stop_token_ids)},
        )  # fmt: skip

        def reward(completions, answer, **kwargs):
            return [closeness(c[0]["content"], a) for c, a in zip(completions, answer, strict=True)]

        rollout_func = None
        if mode == "train":
            trajs = task.trajectories

            def rollout_func(prompts, trainer):  # the fixed completions, in TRL's row order (prompt-major)
                if len(prompts) != len(trajs):
                    raise RuntimeError(f"TRL asked for {len(prompts)} rows, expected {len(trajs)}")
                return {
                    "prompt_ids": [t.segments[0].token_ids for t in trajs],
                    "completion_ids": [t.segments[1].token_ids for t in trajs],
                    "logprobs": [t.segments[1].logprobs for t in trajs],
                }
        else:
            rows = [task.completions[b % G] for b in range(B)]
            fill = task.chat.tokenizer.convert_tokens_to_ids("<|im_end|>")
            generate = model.generate

            @functools.wraps(generate)
            def forced_generate(*a, **k):
                k["logits_processor"] = forcing(rows, k["input_ids"].shape[1], fill)
                return generate(*a, **k)

            model.generate = forced_generate

        self.clock = Clock()
        ref: list = []
        self.timer = StepTimer(self.clock, ref)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.trainer = GRPOTrainer(
                model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                processing_class=task.processor, rollout_func=rollout_func, callbacks=[self.timer],
            )  # fmt: skip
        self.trainer.remove_callback(PrinterCallback)
        ref.append(self.trainer)
        self.trainer._prepare_inputs = self.clock.timed(self.trainer._prepare_inputs)

    def block(self, steps: int) -> list[Step]:
        self.timer.steps = []
        self.trainer.args.max_steps = steps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.trainer.train()
        return self.timer.steps

    def check_batch(self) -> dict:
        """TRL's last training batch: the tokens we count and the completions we gave (rows shuffled)."""
        inputs = self.trainer._buffered_inputs[0]
        tokens = int(inputs["prompt_mask"].sum() + inputs["completion_mask"].sum())
        if tokens != self.task.tokens_per_step:
            raise RuntimeError(f"TRL's batch holds {tokens} tokens, ours {self.task.tokens_per_step}")
        theirs = sorted(map(tuple, inputs["completion_ids"].tolist()))
        ours = sorted(tuple(self.task.completions[b % self.task.group_size]) for b in range(len(self.task.trajectories)))
        if theirs != ours:
            raise RuntimeError("TRL's completions differ from ours")
        return {"trl_batch_tokens": tokens, "trl_completion_ids_equal": True}


# ---- ours ----------------------------------------------------------------------------------------------


class OurSide:
    """Our step on a copy of the model: rewards, `group_advantages`, `grpo_update` (+ the rollout in e2e)."""

    name = "agent-grpo"

    def __init__(self, task: Task, mode: str, args):
        self.task, self.mode = task, mode
        self.model = copy.deepcopy(task.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR, betas=BETAS, weight_decay=0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0)
        self.loss = LossConfig(variant="dapo", epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH, beta=0.0,
                               num_iterations=1, is_level="none", mask_truncated=False)
        self.clock = Clock()
        self.step_index = 0
        if mode == "e2e":
            G = task.group_size
            fill = task.chat.tokenizer.convert_tokens_to_ids("<|im_end|>")
            hook = lambda requests, width: forcing(  # noqa: E731
                [task.completions[int(r.key.rsplit("-", 1)[1]) % G] for r in requests], width, fill
            )
            self.engine = HFEngine(self.model, task.chat, logits_processors=hook)
            self.driver = RolloutDriver(task.env, self.engine, task.chat, rollout_config(args))

    def one_step(self) -> Step:
        task, clock = self.task, self.clock
        clock.start()
        t0 = time.perf_counter()
        if self.mode == "e2e":
            self.engine.clear_image_cache()  # a new step brings new tasks
            trajs = self.driver.rollout(task.tasks, step=self.step_index)
            if [len(t.segments[-1].token_ids) for t in trajs] != [task.length] * len(trajs):
                raise RuntimeError("the forced rollout did not produce the scripted completions")
        else:
            trajs = task.trajectories
        rewards = [closeness(t.turns[-1].text, t.task.answer) for t in trajs]
        for t, a in zip(trajs, group_advantages(rewards, task.group_size, "group").tolist(), strict=True):
            t.advantage = a
        clock.prep += time.perf_counter() - t0
        out = grpo_update(
            self.model, self.optimizer, self.scheduler, trajs, task.chat, task.env.budget, self.loss,
            temperature=1.0, micro_batch_tokens=1 << 30, max_grad_norm=MAX_GRAD_NORM, max_completion_length=task.length,
        )  # fmt: skip
        step = clock.stop(out["entropy"])
        if int(out["train_tokens"]) != task.tokens_per_step:
            raise RuntimeError(f"our batch holds {int(out['train_tokens'])} tokens, expected {task.tokens_per_step}")
        self.step_index += 1
        return step

    def block(self, steps: int) -> list[Step]:
        with timed_assembly(self.clock):
            return [self.one_step() for _ in range(steps)]


@contextlib.contextmanager
def timed_assembly(clock: Clock):
    """Count `assemble_batch` (inside `grpo_update`) as time before the forward."""
    original = agent_grpo.train.step.assemble_batch
    agent_grpo.train.step.assemble_batch = clock.timed(original)
    try:
        yield
    finally:
        agent_grpo.train.step.assemble_batch = original


# ---- the run ---------------------------------------------------------------------------------------


def summarise(blocks: dict[str, list[list[Step]]], tokens: int) -> dict:
    med = statistics.median
    out = {}
    for side, runs in blocks.items():
        steps = [s for block in runs for s in block]
        wall, cpu, prep = med(s.wall for s in steps), med(s.cpu for s in steps), med(s.prep for s in steps)
        out[side] = {
            "steps": len(steps), "step_s": wall, "step_min_s": min(s.wall for s in steps),
            "step_max_s": max(s.wall for s in steps), "step_cpu_s": cpu, "prep_s": prep,
            "core_s": med(s.wall - s.prep for s in steps), "tokens_per_s": tokens / wall, "tokens_per_cpu_s": tokens / cpu,
        }  # fmt: skip
    trl, ours = out["trl"], out["ours"]
    ratios = [med(s.wall for s in a) / med(s.wall for s in b) for a, b in zip(blocks["trl"], blocks["ours"], strict=True)]
    out["ratio"] = trl["step_s"] / ours["step_s"]  # tokens/s ours over TRL: the same tokens on both sides
    out["ratio_cpu"] = trl["step_cpu_s"] / ours["step_cpu_s"]
    out["ratio_core"] = trl["core_s"] / ours["core_s"]
    out["ratio_per_repeat"] = {"median": med(ratios), "min": min(ratios), "max": max(ratios)}
    out["goal_met"] = out["ratio"] >= GOAL
    return out


def run_mode(task: Task, mode: str, args, out_dir: str) -> dict:
    trl, ours = TRLSide(task, mode, out_dir), OurSide(task, mode, args)
    # Warm-up block each; the first steps (identical weights, identical inputs) must agree.
    first_trl, first_ours = trl.block(args.warmup_steps), ours.block(args.warmup_steps)
    checks = trl.check_batch()
    e_trl, e_ours = first_trl[0].entropy, first_ours[0].entropy
    if e_trl is None or abs(e_trl - e_ours) > 1e-4 * max(1.0, abs(e_trl)):
        raise RuntimeError(f"first-step entropies differ: TRL {e_trl}, ours {e_ours}: not the same forward")
    checks.update(first_step_entropy_trl=e_trl, first_step_entropy_ours=e_ours)
    blocks: dict[str, list[list[Step]]] = {"trl": [], "ours": []}
    for i in range(args.repeats):
        order = ("trl", "ours") if i % 2 == 0 else ("ours", "trl")
        for side in order:
            blocks[side].append((trl if side == "trl" else ours).block(args.steps))
        t, o = (statistics.median(s.wall for s in blocks[k][-1]) for k in ("trl", "ours"))
        print(f"[{mode}] repeat {i + 1}/{args.repeats} ({'AB' if order[0] == 'trl' else 'BA'}): "
              f"TRL {t:.3f} s/step, ours {o:.3f} s/step", file=sys.stderr)  # fmt: skip
        if torch.get_num_threads() != args.threads:
            raise RuntimeError(f"torch threads changed to {torch.get_num_threads()} during the run")
    summary = summarise(blocks, task.tokens_per_step)
    raw = {side: [[vars(s) for s in block] for block in runs] for side, runs in blocks.items()}
    return {"summary": summary, "checks": checks, "steps": raw, "_ours": ours}


def table(task: Task, results: dict) -> str:
    rows = len(task.trajectories)
    lines = [
        f"batch: {rows // task.group_size} prompts x G={task.group_size} = {rows} rows x "
        f"({task.checks['prompt_tokens']} prompt + {task.length} completion) = {task.tokens_per_step} tokens per step",
        "",
        "| mode | side | step s, median [min-max] | before forward s | fwd+bwd+opt s | CPU s | tokens/s (per CPU s) | ours/TRL |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, res in results.items():
        s = res["summary"]
        for side, label in (("trl", "TRL GRPOTrainer"), ("ours", "agent-grpo")):
            x = s[side]
            pairs = s["ratio_per_repeat"]
            ratio = (f"**{s['ratio']:.2f}x** (pairs {pairs['median']:.2f} [{pairs['min']:.2f}-{pairs['max']:.2f}]; "
                     f"CPU {s['ratio_cpu']:.2f}x; fwd+bwd+opt {s['ratio_core']:.2f}x)") if side == "ours" else ""
            lines.append(
                f"| {mode} | {label} | {x['step_s']:.3f} [{x['step_min_s']:.3f}-{x['step_max_s']:.3f}] | "
                f"{x['prep_s']:.3f} | {x['core_s']:.3f} | {x['step_cpu_s']:.3f} | {x['tokens_per_s']:.0f} "
                f"({x['tokens_per_cpu_s']:.0f}) | {ratio} |"
            )  # fmt: skip
    return "\n".join(lines)


def profile_ours(ours: OurSide, top: int) -> str:
    """cProfile of one of our steps: top functions by own time, then ours by cumulative time."""
    prof = cProfile.Profile()
    prof.enable()
    ours.one_step()
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(r"agent_grpo|image_process|modeling_qwen", top)
    return buf.getvalue()


def environment_info() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = "", False
    import transformers
    import trl

    return {
        "date": dt.date.today().isoformat(), "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "trl": trl.__version__, "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "commit": commit + ("-dirty" if dirty else ""),
    }  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2, help="optimizer steps per timed block")
    p.add_argument("--repeats", type=int, default=8, help="measured TRL/ours block pairs per mode (after a warm-up pair)")
    p.add_argument("--warmup-steps", type=int, default=2, help="steps of the untimed warm-up block of each side")
    p.add_argument("--prompts", type=int, default=4, help="tasks per step (Q)")
    p.add_argument("--group-size", type=int, default=8, help="completions per task (G)")
    p.add_argument("--completion-tokens", type=int, default=64, help="tokens of every completion (C)")
    p.add_argument("--size", default="S", help="tiny model size (S or M)")
    p.add_argument("--modes", default="train,e2e", help="comma-separated: train (fixed completions), e2e (with generation)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="also cProfile one of our steps per mode, top N")
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds): what CI runs so the script never rots")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.warmup_steps, args.prompts, args.group_size, args.completion_tokens = 1, 1, 1, 2, 2, 24
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if bad := [m for m in args.modes if m not in MODES]:
        p.error(f"--modes {bad}: choose from {', '.join(MODES)}")
    if args.group_size < 2 or args.prompts < 1:
        p.error("--group-size must be at least 2 (GRPO) and --prompts at least 1")
    if min(args.steps, args.repeats, args.warmup_steps) < 1:
        p.error("--steps, --repeats and --warmup-steps must be at least 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    task = build_task(args)
    results = {}
    with tempfile.TemporaryDirectory() as out_dir:
        for mode in args.modes:
            results[mode] = run_mode(task, mode, args, out_dir)
    print(table(task, results))
    for mode, res in results.items():
        verdict = "met" if res["summary"]["goal_met"] else "NOT met"
        s = res["summary"]
        print(f"{mode}: ours/TRL tokens/s = {s['ratio']:.2f}x wall, {s['ratio_per_repeat']['median']:.2f}x median of "
              f"pairs, {s['ratio_cpu']:.2f}x CPU time (goal >= {GOAL:.1f}x on wall medians: {verdict})")  # fmt: skip
    if args.profile:
        for mode, res in results.items():
            print(f"\n---- cProfile of one of our {mode} steps ----")
            print(profile_ours(res["_ours"], args.profile))
    for res in results.values():
        del res["_ours"]
    result = {
        "benchmark": "train_vs_trl",
        "command": " ".join([os.path.relpath(sys.argv[0]) if argv is None else "train_vs_trl.py", *(argv or sys.argv[1:])]),
        "config": vars(args) | {"env": task.env.name, "tokens_per_step": task.tokens_per_step, **task.checks},
        "machine": environment_info(),
        "results": results,
    }
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    task.env.shutdown()
    return result


if __name__ == "__main__":
    main()
