"""Rollout throughput and the driver's overhead over raw `model.generate` (issue 3).

    .venv/bin/python bench/rollout_overhead.py --repeats 7 --json bench/results/rollout-overhead-$(date +%F).json

Target: for the tiny model on CPU, 32 trajectories x 3 turns, the driver adds under 15% to the time
raw generation takes.

What runs. The policy is the tiny Qwen2.5-VL (`build_tiny_model`, size S, seed 0) behind `HFEngine`.
Its turns are forced by a logits processor (as in the rollout tests): every step the real model runs
its forward and the processor keeps one scripted token, so the per-step compute equals sampling while
every trajectory takes exactly `--turns` turns: zoom into the red square's cell, zoom into the square
(both on image 0), ..., answer. The environment is the installed `visual-search` (1 prompt image,
`zoom_in`, its own budget with `max_turns` and `max_images` set to `--turns`); without it, a small
in-script stand-in with the same shape (an 896 px canvas).

A = `RolloutDriver.rollout` time for `--batch` trajectories (`--batch / --group-size` tasks), the
engine's image cache cleared first (as in a training step with new tasks). Every engine call is
recorded (the `GenRequest`s and each row's generated tokens).
B = raw `model.generate` on exactly those calls: the same rows left-padded the same way, pixel values
from the same processor call (prepared before the clock starts), the same sampling settings, seed,
stop and suppressed ids and forcing processor, `max_new_tokens` = the call's longest row; no logits are returned.
The bench checks that B generates the same tokens as A. Overhead = (A - B) / B; also reported, from
A alone: the time outside `model.generate` over the time inside it (no between-run noise).

A's breakdown is exclusive time (a nested call's time is taken out of its caller): `model.generate`,
image preprocessing in the engine, the rest of the engine (padding, logprob gather, cutting results),
`env.step` (tools), env start/finish/scoring, chat rendering, encoding + decoding, model views
(resizing), and what is left (the driver's own bookkeeping).

A and B alternate (A B, B A, ...) and medians are reported, so load from neighbours falls on both.
CPU time (`time.process_time`) is reported beside wall time and decides the target: with one torch
thread it equals wall time on a quiet machine, and it is far less sensitive to busy neighbours.
Use one torch thread; `--json` saves everything for comparison over time (see bench/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import functools
import io
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw
from transformers import LogitsProcessorList

import agent_grpo.budget
import agent_grpo.rollout.driver
from agent_grpo.budget import VisualBudget
from agent_grpo.content import ImagePart
from agent_grpo.envs import Environment
from agent_grpo.models.chat import ChatFormat
from agent_grpo.models.mrope import mm_token_type_ids
from agent_grpo.models.tiny import build_tiny_model
from agent_grpo.rewards import accuracy, format_reward
from agent_grpo.rewards.rubric import Rubric
from agent_grpo.rollout import HFEngine, RolloutConfig, RolloutDriver, SamplingParams
from agent_grpo.trajectory import Task, Termination

TARGET = 0.15
BREAKDOWN = (  # label, what it covers
    ("model.generate", "the model's generate inside the engine"),
    ("engine: images", "image preprocessing (pixel values) in the engine"),
    ("engine: other", "padding, logprob gather, cutting results"),
    ("env.step (tools)", "parsing, tool calls, budget"),
    ("env: start/finish/score", "prompt building, finishing, rubric"),
    ("chat: render", "chat template rendering"),
    ("chat: encode+decode", "tokenizer encode and decode"),
    ("model views", "resizing images to the model's view"),
    ("driver: other", "the driver's own bookkeeping (A minus the rest)"),
)


# ---- the environment and the forced policy ---------------------------------------------------------


class _StandIn(Environment):
    """Used only when `visual-search` is not installed: an 896 px canvas with a red square in one cell."""

    name = "visual-search-standin"
    tool_names = ("zoom_in",)

    def load_tasks(self, split="train", n=None, seed=0):
        rng = np.random.default_rng(seed)
        tasks = []
        for i in range(n or 8):
            image = Image.fromarray(rng.integers(200, 255, size=(896, 896, 3), dtype=np.uint8))
            col, row = int(rng.integers(4)), int(rng.integers(4))
            cell = [224 * col, 224 * row, 224 * col + 224, 224 * row + 224]
            target = [cell[0] + 60, cell[1] + 60, cell[0] + 144, cell[1] + 144]
            ImageDraw.Draw(image).rectangle(target, fill=(215, 30, 35))
            tasks.append(Task(id=f"{split}-{i}", question="What digit is in the red square?", answer=str(i % 10),
                              images=[ImagePart.from_pil(image)], split=split,
                              metadata={"cell_box": cell, "target_box": target}))
        return tasks

    def default_rubric(self):
        return Rubric([format_reward.with_weight(0.2), accuracy("exact", weight=0.8)])


def make_environment(turns: int) -> Environment:
    """`visual-search` if installed, else the stand-in; its own budget, changed to allow exactly `turns` turns."""
    try:
        from agent_grpo.envs import make_env

        env = make_env("visual-search")
    except Exception as e:  # not installed (or broken): the stand-in keeps the bench runnable
        print(f"visual-search unavailable ({type(e).__name__}: {e}); using the in-script stand-in", file=sys.stderr)
        env = _StandIn(budget=VisualBudget(max_pixels_per_image=224 * 224))
    env.budget = env.budget.model_copy(update={"max_turns": turns, "max_images": turns, "max_visual_tokens": 8192})
    return env


def turn_text(task: Task, turn: int, turns: int) -> str:
    """Turn `turn` of the forced policy: zoom into the cell, then into the red square, ..., answer."""
    if turn >= turns - 1:
        return f"<think>The digit is {task.answer}.</think>\n<answer>{task.answer}</answer>"
    box = task.metadata["cell_box"] if turn == 0 else task.metadata["target_box"]
    call = {"name": "zoom_in", "arguments": {"bbox_2d": [int(v) for v in box], "image": 0, "label": "red square"}}
    return f"<think>Too small to read; zoom in.</think>\n<tool_call>{json.dumps(call)}</tool_call>"


def forcing(token_rows: list[list[int]], width: int, fill_id: int) -> LogitsProcessorList:
    """Row b emits `token_rows[b][step]` (then `fill_id`): every other logit becomes -inf.

    The model's forward runs as in sampling; logprobs are still taken from the raw logits.
    """

    def force(input_ids, scores):
        step = input_ids.shape[1] - width
        out = torch.full_like(scores, float("-inf"))
        for b, ids in enumerate(token_rows):
            out[b, ids[step] if step < len(ids) else fill_id] = 0.0
        return out

    return LogitsProcessorList([force])


class ForcedPolicy:
    """`HFEngine(logits_processors=...)` hook: each row follows `turn_text` of its trajectory's task."""

    def __init__(self, chat: ChatFormat, tasks_by_trajectory: dict[str, Task], turns: int):
        self.chat = chat
        self.tasks = tasks_by_trajectory
        self.turns = turns
        self.fill_id = chat.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self._encoded: dict[tuple[str, int], list[int]] = {}

    def _ids(self, key: str, turn: int) -> list[int]:
        """Tokenised once (the warm-up), so the policy's own tokenising stays out of A."""
        if (key, turn) not in self._encoded:
            text = turn_text(self.tasks[key], turn, self.turns)
            self._encoded[key, turn] = self.chat.tokenizer.encode(text, add_special_tokens=False)
        return self._encoded[key, turn]

    def __call__(self, requests, width):
        return forcing([self._ids(r.key, r.turn) for r in requests], width, self.fill_id)


# ---- instrumentation -------------------------------------------------------------------------------


_MISSING = object()


class Timers:
    """Exclusive wall and CPU time per label: a wrapped call's time minus that of wrapped calls inside it."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._stack: list[list[float]] = []  # [wall, cpu] spent in children of each open call

    def wrap(self, fn, label: str):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self._stack.append([0.0, 0.0])
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                child_wall, child_cpu = self._stack.pop()
                self.wall[label] = self.wall.get(label, 0.0) + wall - child_wall
                self.cpu[label] = self.cpu.get(label, 0.0) + cpu - child_cpu
                if self._stack:
                    self._stack[-1][0] += wall
                    self._stack[-1][1] += cpu

        return timed


@contextlib.contextmanager
def patched(patches: list[tuple[object, str, object]]):
    """Shadow methods (instance attributes) or module functions with timed wrappers for the duration."""
    saved = [(obj, name, obj.__dict__.get(name, _MISSING)) for obj, name, _ in patches]
    for obj, name, value in patches:
        object.__setattr__(obj, name, value)
    try:
        yield
    finally:
        for obj, name, old in reversed(saved):
            if old is _MISSING:
                object.__delattr__(obj, name)
            else:
                object.__setattr__(obj, name, old)


@dataclass
class Call:
    """One engine call as the driver made it."""

    token_ids: list[list[int]]
    images: list[list[Image.Image]]
    generated: list[list[int]] = field(default_factory=list)  # each row's tokens, as returned


class RecordingEngine:
    """Passes calls to the real engine and records their inputs and outputs."""

    def __init__(self, engine: HFEngine):
        self.engine = engine
        self.calls: list[Call] = []

    def update_weights(self, state_dict):
        self.engine.update_weights(state_dict)

    def generate(self, requests, params):
        results = self.engine.generate(requests, params)
        call = Call([list(r.token_ids) for r in requests], [list(r.images) for r in requests])
        call.generated = [list(res.token_ids) for res in results]
        self.calls.append(call)
        return results


# ---- the two measurements --------------------------------------------------------------------------


@dataclass
class Setup:
    model: torch.nn.Module
    chat: ChatFormat
    env: Environment
    engine: HFEngine
    driver: RolloutDriver
    tasks: list[Task]
    recorder: RecordingEngine


def build(args) -> Setup:
    model, processor = build_tiny_model(size=args.size, seed=0)
    chat = ChatFormat(processor)
    env = make_environment(args.turns)
    tasks = list(env.load_tasks(n=args.batch // args.group_size))
    by_trajectory = {f"{t.id}-{k}": t for t in tasks for k in range(args.group_size)}
    cache = {} if args.image_cache_mb is None else {"image_cache_mb": args.image_cache_mb}
    engine = HFEngine(model, chat, logits_processors=ForcedPolicy(chat, by_trajectory, args.turns), **cache)
    recorder = RecordingEngine(engine)
    config = RolloutConfig(
        group_size=args.group_size, max_total_tokens=4096, max_batch_size=args.batch,
        sampling=SamplingParams(max_new_tokens=args.max_new_tokens),
    )
    return Setup(model, chat, env, engine, RolloutDriver(env, recorder, chat, config), tasks, recorder)


def run_a(s: Setup) -> tuple[float, float, dict[str, dict[str, float]], list]:
    """One full rollout, instrumented: (wall s, CPU s, {"wall"|"cpu": exclusive s by label}, trajectories)."""
    timers = Timers()
    w = timers.wrap
    patches = [
        (s.model, "generate", w(s.model.generate, "model.generate")),
        (s.engine, "generate", w(s.engine.generate, "engine: other")),
        (s.engine, "_image_inputs", w(s.engine._image_inputs, "engine: images"))
        if hasattr(s.engine, "_image_inputs")  # the engine's cache of preprocessed images
        else (s.chat, "image_inputs", w(s.chat.image_inputs, "engine: images")),
        (s.env, "step", w(s.env.step, "env.step (tools)")),
        *[(s.env, m, w(getattr(s.env, m), "env: start/finish/score")) for m in ("start", "finish", "score_group", "close")],
        (s.chat, "render_text", w(s.chat.render_text, "chat: render")),
        (s.chat, "encode", w(s.chat.encode, "chat: encode+decode")),
        (s.chat, "decode", w(s.chat.decode, "chat: encode+decode")),
    ]
    # Views are made through `model_view` wherever the driver or budget calls it (module globals).
    for module in (agent_grpo.budget, agent_grpo.rollout.driver):
        if hasattr(module, "model_view"):
            patches.append((module, "model_view", w(module.model_view, "model views")))
    s.recorder.calls.clear()
    if hasattr(s.engine, "clear_image_cache"):
        s.engine.clear_image_cache()  # each rollout starts cold, as a training step with new tasks would
    with patched(patches):
        c0, t0 = time.process_time(), time.perf_counter()
        trajectories = s.driver.rollout(s.tasks)
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
    parts = {}
    for kind, spent, whole in (("wall", timers.wall, total), ("cpu", timers.cpu, cpu)):
        parts[kind] = {label: spent.get(label, 0.0) for label, _ in BREAKDOWN[:-1]}
        parts[kind]["driver: other"] = whole - sum(parts[kind].values())
    return total, cpu, parts, trajectories


def raw_inputs(s: Setup, call: Call) -> dict[str, torch.Tensor]:
    """The call's rows left-padded as `HFEngine` pads them, with pixel values from the same processor."""
    width = max(len(t) for t in call.token_ids)
    ids = torch.full((len(call.token_ids), width), s.engine.pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(call.token_ids):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    inputs = {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": mm_token_type_ids(ids, s.chat.image_token_id)}
    images = [img for row in call.images for img in row]
    if images:
        inputs.update(s.chat.image_inputs(images))
    return inputs


def run_b(s: Setup, prepared: list[tuple[dict, Call]], params: SamplingParams, seeds: list[int]):
    """Raw `model.generate` on each recorded call; only the generate calls are timed. (wall s, CPU s, tokens)"""
    total, cpu, outputs = 0.0, 0.0, []
    fill = s.chat.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for (inputs, call), seed in zip(prepared, seeds, strict=True):
        width = inputs["input_ids"].shape[1]
        steps = max(len(g) for g in call.generated)
        config = s.engine.generation_config(params, steps)
        config.return_dict_in_generate, config.output_logits = False, False
        torch.manual_seed(seed)
        c0, t0 = time.process_time(), time.perf_counter()
        with s.engine.without_checkpoint_defaults():  # the engine's exact sampling settings, minus the logits
            out = s.model.generate(
                **inputs, generation_config=config, logits_processor=forcing(call.generated, width, fill)
            )
        total, cpu = total + time.perf_counter() - t0, cpu + time.process_time() - c0
        outputs.append(out[:, width:])
    return total, cpu, outputs


def check_same_tokens(calls: list[Call], outputs: list[torch.Tensor]) -> None:
    for c, (call, out) in enumerate(zip(calls, outputs, strict=True)):
        for b, row in enumerate(call.generated):
            if out[b, : len(row)].tolist() != row:
                raise RuntimeError(f"raw generate differs from the driver's tokens in call {c}, row {b}")


# ---- reporting -------------------------------------------------------------------------------------


def environment_info() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = "", False
    return {
        "date": dt.date.today().isoformat(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "commit": commit + ("-dirty" if dirty else ""),
    }


def table(summary: dict) -> str:
    a, b = summary["A_s"], summary["B_s"]
    rows = [
        ("trajectories", f"{summary['trajectories']} ({summary['engine_calls']} engine calls)"),
        ("generated tokens", f"{summary['generated_tokens']}"),
        ("A: driver rollout, wall (CPU)", f"{a:.3f} s ({summary['A_cpu_s']:.3f} s)"),
        ("B: raw model.generate, wall (CPU)", f"{b:.3f} s ({summary['B_cpu_s']:.3f} s)"),
        ("overhead (A-B)/B, wall", f"{100 * summary['overhead']:.1f}% (median of pairs {100 * summary['overhead_pairs']:.1f}%)"),
        ("overhead (A-B)/B, CPU time", f"{100 * summary['overhead_cpu']:.1f}%"),
        ("within A: time outside / inside model.generate (CPU)", f"{100 * summary['framework_share_cpu']:.1f}%"),
        ("trajectories/s, A / B (wall)", f"{summary['trajectories'] / a:.2f} / {summary['trajectories'] / b:.2f}"),
        ("generated tokens/s, A / B (wall)", f"{summary['generated_tokens'] / a:.0f} / {summary['generated_tokens'] / b:.0f}"),
        ("generated tokens/s, A / B (CPU)",
         f"{summary['generated_tokens'] / summary['A_cpu_s']:.0f} / {summary['generated_tokens'] / summary['B_cpu_s']:.0f}"),
    ]
    lines = ["| measure | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]
    lines += ["", "| A breakdown (exclusive, medians) | wall s | CPU s | % of A's CPU |", "|---|---:|---:|---:|"]
    wall, cpu = summary["breakdown_s"]["wall"], summary["breakdown_s"]["cpu"]
    for label, _ in BREAKDOWN:
        lines.append(f"| {label} | {wall[label]:.3f} | {cpu[label]:.3f} | {100 * cpu[label] / summary['A_cpu_s']:.1f} |")
    return "\n".join(lines)


def profile_rollout(s: Setup, top: int) -> str:
    """cProfile of one rollout: the top functions by own time, then by cumulative time."""
    prof = cProfile.Profile()
    prof.enable()
    s.driver.rollout(s.tasks)
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    # The framework's side: everything but the model, by cumulative time.
    stats.sort_stats("cumulative").print_stats(r"agent_grpo|image_process|PIL|tokeniz|jinja|hashlib", top)
    return buf.getvalue()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="measured A/B pairs (after one warm-up pair)")
    p.add_argument("--batch", type=int, default=32, help="trajectories per rollout")
    p.add_argument("--group-size", type=int, default=4, help="trajectories per task (G)")
    p.add_argument("--turns", type=int, default=3, help="model turns per trajectory (turns-1 zooms, then the answer)")
    p.add_argument("--size", default="S", help="tiny model size (S or M)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="per-turn limit (the forced turns are shorter)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--image-cache-mb", type=int, help="HFEngine's image cache (0: off; default: the engine's)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="also cProfile one rollout and print the top N")
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds): what CI runs so the script never rots")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.batch, args.group_size, args.turns = 1, 4, 2, 2
    if args.batch % args.group_size:
        p.error(f"--batch ({args.batch}) must be a multiple of --group-size ({args.group_size}); change either")
    if args.turns < 1 or args.repeats < 1:
        p.error("--turns and --repeats must be at least 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    s = build(args)
    params = s.driver.config.sampling

    # Warm-up A records the calls; every later A must make the same ones (forced, so deterministic).
    _, _, _, trajectories = run_a(s)
    calls = list(s.recorder.calls)
    bad = [t.id for t in trajectories if len(t.turns) != args.turns or t.termination != Termination.ANSWERED]
    if bad:
        raise RuntimeError(f"{len(bad)} trajectories did not take {args.turns} turns and answer, e.g. {bad[0]}")
    seeds = list(range(len(calls)))  # the driver's sampling seed for turn t of `rollout(seed=0)` is t
    if len(calls) != args.turns:
        raise RuntimeError(f"expected one engine call per turn, got {len(calls)} for {args.turns} turns")
    prepared = [(raw_inputs(s, c), c) for c in calls]
    _, _, outputs = run_b(s, prepared, params, seeds)
    check_same_tokens(calls, outputs)

    runs = []
    for i in range(args.repeats):
        order = "AB" if i % 2 == 0 else "BA"
        run: dict = {"order": order}
        for which in order:
            if which == "A":
                run["A_s"], run["A_cpu_s"], run["breakdown_s"], _ = run_a(s)
                if [c.generated for c in s.recorder.calls] != [c.generated for c in calls]:
                    raise RuntimeError("the rollout changed between repeats")
            else:
                run["B_s"], run["B_cpu_s"], _ = run_b(s, prepared, params, seeds)
        runs.append(run)
        print(f"repeat {i + 1}/{args.repeats} ({order}): A {run['A_s']:.3f} s (CPU {run['A_cpu_s']:.3f}), "
              f"B {run['B_s']:.3f} s (CPU {run['B_cpu_s']:.3f})", file=sys.stderr)

    med = statistics.median
    summary = {
        "trajectories": len(trajectories),
        "engine_calls": len(calls),
        "generated_tokens": sum(len(g) for c in calls for g in c.generated),
        "prompt_tokens_per_call": [sum(len(t) for t in c.token_ids) for c in calls],
        "images_per_call": [sum(len(i) for i in c.images) for c in calls],
        "A_s": med(r["A_s"] for r in runs),
        "B_s": med(r["B_s"] for r in runs),
        "overhead_pairs": med((r["A_s"] - r["B_s"]) / r["B_s"] for r in runs),
        "A_cpu_s": med(r["A_cpu_s"] for r in runs),
        "B_cpu_s": med(r["B_cpu_s"] for r in runs),
        "breakdown_s": {
            kind: {label: med(r["breakdown_s"][kind][label] for r in runs) for label, _ in BREAKDOWN}
            for kind in ("wall", "cpu")
        },
    }
    summary["overhead"] = (summary["A_s"] - summary["B_s"]) / summary["B_s"]
    summary["overhead_cpu"] = (summary["A_cpu_s"] - summary["B_cpu_s"]) / summary["B_cpu_s"]
    # The same question inside each A alone: time outside model.generate over time in it (CPU).
    summary["framework_share_cpu"] = med(
        (r["A_cpu_s"] - r["breakdown_s"]["cpu"]["model.generate"]) / r["breakdown_s"]["cpu"]["model.generate"] for r in runs
    )
    summary["target_met"] = summary["overhead_cpu"] < TARGET  # CPU time: wall swings with neighbours' load
    result = {
        "benchmark": "rollout_overhead",
        "command": " ".join([os.path.relpath(sys.argv[0]) if argv is None else "rollout_overhead.py", *(argv or sys.argv[1:])]),
        "config": vars(args) | {"env": s.env.name},
        "machine": environment_info(),
        "summary": summary,
        "runs": runs,
    }
    print(table(summary))
    verdict = "met" if summary["target_met"] else "NOT met"
    print(f"\ntarget: overhead < {100 * TARGET:.0f}% in CPU time -> {verdict} "
          f"(CPU {100 * summary['overhead_cpu']:.1f}%, wall {100 * summary['overhead']:.1f}%)")
    if args.profile:
        print(profile_rollout(s, args.profile))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    s.env.shutdown()
    return result


if __name__ == "__main__":
    main()
