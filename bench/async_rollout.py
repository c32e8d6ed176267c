"""Asynchronous rollouts (issue 16): the synchronous driver, the per-trajectory driver and pipelining side by side.

    .venv-vllm/bin/python bench/async_rollout.py                 # vLLM (scripts/setup_vllm.sh), the real comparison
    .venv/bin/python bench/async_rollout.py --quick              # CI: tiny; without vLLM the HF engine stands in

Workload (`bench/_async_workload.py`): `--tasks` x `--group-size` trajectories of the tiny Qwen2.5-VL (size S) on
448 px images, each with 1-4 zoom calls (zooms of zooms) and then an answer, every turn's reply 4-120 words of
thinking (lengths differ several-fold), the zoom tool pausing 50-200 ms per call (in the tool worker processes).
What each trajectory writes is scripted (a vLLM logits processor forces the tokens; the model still runs every
step and logprobs are its own), so all modes do exactly the same work. One training step = the rollout, a real
GRPO update of the tiny model (AdamW) on its trajectories, then the weight sync to the engine.

Modes, in one run on the same engine:
- sync:        `schedule: batch`: each turn waits for the whole batch, then the batch's tools run one after another;
- trajectory:  `schedule: trajectory`: each trajectory advances on its own, its tools beside the others' decoding;
- pipelined:   trajectory schedule + `max_staleness: 1`: step k+1's rollout runs while step k's update runs.

Reported per mode: steps/s, seconds per step, rollout and update seconds per step (as measured inside the mode),
and the share of the step's wall time the engine was idle (not inside an engine step). The pipelined mode is timed
in steady state: its first rollout (which nothing overlaps, once per run) fills the pipeline before the clock starts.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import json
import os
import platform
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `_async_workload`, importable by the tool workers too

from _async_workload import SlowZoomEnv, slow_zoom, turn_text  # noqa: E402

from agent_grpo.models.chat import ChatFormat  # noqa: E402
from agent_grpo.models.tiny import build_tiny_model  # noqa: E402
from agent_grpo.rollout import HFEngine, RolloutConfig, RolloutDriver, SamplingParams  # noqa: E402
from agent_grpo.tools.registry import ToolRegistry  # noqa: E402
from agent_grpo.train.advantages import group_advantages  # noqa: E402
from agent_grpo.train.config import LossConfig  # noqa: E402
from agent_grpo.train.step import grpo_update  # noqa: E402

MODES = ("sync", "trajectory", "pipelined")


def vllm_available() -> bool:
    spec = importlib.util.find_spec("vllm")
    return spec is not None and spec.origin is not None


class Busy:
    """Time spent inside the engine (step loop or generate calls), from any thread."""

    def __init__(self):
        self.s = 0.0
        self._lock = threading.Lock()

    def wrap(self, fn):
        @functools.wraps(fn)
        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                with self._lock:
                    self.s += time.perf_counter() - t0
        return timed


def build_engine(model, processor, chat, args, busy: Busy):
    """(engine for the driver, weight sync) on vLLM with scripted tokens, or on HF with a forcing logits processor."""
    short = args.quick
    if vllm_available() and not args.hf:
        from agent_grpo.rollout.vllm_async import VLLMStepEngine, scripted_tokens_processor
        from agent_grpo.rollout.vllm_engine import VLLMEngine, import_vllm

        vllm = import_vllm()
        original = vllm.LLM
        vllm.LLM = functools.partial(original, logits_processors=[scripted_tokens_processor()])
        try:
            engine = VLLMEngine(model, processor, chat, max_images=6, max_model_len=args.max_total_tokens)
        finally:
            vllm.LLM = original
        ids = lambda r: chat.tokenizer.encode(turn_text(r.key, r.turn, short), add_special_tokens=False)  # noqa: E731
        stepper = VLLMStepEngine(engine, extra_args=lambda r: {"scripted_ids": ids(r)})
        stepper.step = busy.wrap(stepper.step)  # the batch path (generate) runs the same step loop
        return "vllm", stepper, engine.sync_weights
    from transformers import LogitsProcessorList

    def force(requests, width):
        forced = [chat.tokenizer.encode(turn_text(r.key, r.turn, short), add_special_tokens=False) for r in requests]

        def processor(input_ids, scores):
            step = input_ids.shape[1] - width
            out = torch.full_like(scores, float("-inf"))
            for b, row in enumerate(forced):
                out[b, row[min(step, len(row) - 1)]] = 0.0
            return out

        return LogitsProcessorList([processor])

    copy_ = copy.deepcopy(model).eval()  # generates while the policy trains (pipelined mode)
    engine = HFEngine(copy_, chat, logits_processors=force)
    engine.generate = busy.wrap(engine.generate)
    return "hf", engine, lambda m: copy_.load_state_dict(m.state_dict())


def update(model, optimizer, trajs, chat, budget, args) -> None:
    adv = group_advantages([t.reward + 0.01 * t.sample_index for t in trajs], [t.group_id for t in trajs], scale="group")
    for t, a in zip(trajs, adv.tolist(), strict=True):
        t.advantage = a
    grpo_update(model, optimizer, None, trajs, chat, budget, LossConfig(), temperature=1.0,
                micro_batch_tokens=4096, max_grad_norm=1.0, max_completion_length=args.max_new_tokens * 6)


def run_mode(mode, driver, tasks, model, optimizer, chat, env, sync, busy, args) -> dict:
    driver.config = driver.config.model_copy(update={"schedule": "batch" if mode == "sync" else "trajectory"})
    rollout = lambda s: driver.rollout(tasks, step=s, seed=s, tag=f"{mode}{s}-")  # noqa: E731
    model.eval()
    steps, rollout_s, update_s = [], [], []
    fill_s = 0.0
    if mode == "pipelined":  # fill the pipeline once (a long run pays this once); steady state is timed
        t0 = time.perf_counter()
        trajs = rollout(0)
        fill_s = time.perf_counter() - t0
    busy.s = 0.0
    start = time.perf_counter()
    if mode == "pipelined":
        for s in range(args.steps):
            t0 = time.perf_counter()
            box: dict = {}

            def work(s=s, box=box):
                t = time.perf_counter()
                box["trajs"] = rollout(s + 1)
                box["s"] = time.perf_counter() - t

            background = threading.Thread(target=work)
            background.start()
            update(model, optimizer, trajs, chat, env.budget, args)
            update_s.append(time.perf_counter() - t0)
            background.join()
            trajs = box["trajs"]
            rollout_s.append(box["s"])
            sync(model)
            steps.append(time.perf_counter() - t0)
    else:
        for s in range(args.steps):
            t0 = time.perf_counter()
            trajs = rollout(s)
            t1 = time.perf_counter()
            update(model, optimizer, trajs, chat, env.budget, args)
            sync(model)
            t2 = time.perf_counter()
            steps.append(t2 - t0)
            rollout_s.append(t1 - t0)
            update_s.append(t2 - t1)
    wall = time.perf_counter() - start
    calls = sum(t.num_tool_calls for t in trajs)
    return {"mode": mode, "steps": args.steps, "wall_s": wall, "steps_per_s": args.steps / wall,
            "step_s": statistics.median(steps), "rollout_s": statistics.median(rollout_s),
            "update_s": statistics.median(update_s), "engine_idle": max(0.0, 1 - busy.s / wall),
            "tool_calls_per_traj": calls / len(trajs), "fill_s": fill_s,
            "response_tokens": [int(t.metrics["response_tokens"]) for t in trajs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 tasks x 2, short replies, 1 step a mode (CI)")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="training steps per mode")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--max-total-tokens", type=int, default=2048)
    parser.add_argument("--hf", action="store_true", help="the HF engine even where vLLM is installed")
    parser.add_argument("--json", type=Path, help="save configuration, machine and results here")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.group_size, args.steps = 2, 2, 2
    torch.set_num_threads(1)
    model, processor = build_tiny_model(size="S", seed=0)
    chat = ChatFormat(processor)
    busy = Busy()
    name, engine, sync = build_engine(model, processor, chat, args, busy)
    env = SlowZoomEnv(tools=ToolRegistry([slow_zoom]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    config = RolloutConfig(group_size=args.group_size, max_total_tokens=args.max_total_tokens,
                           sampling=SamplingParams(greedy=True, max_new_tokens=args.max_new_tokens))
    driver = RolloutDriver(env, engine, chat, config)
    tasks = env.load_tasks(n=args.tasks)
    load_before = os.getloadavg()
    driver.rollout(tasks[:1], seed=99, tag="warm-")  # engine start-up, tool workers, caches
    rows = [run_mode(m, driver, tasks, model, optimizer, chat, env, sync, busy, args) for m in MODES]
    env.shutdown()
    sync_row = rows[0]
    print(f"\nengine {name}; {args.tasks} tasks x {args.group_size}; {args.steps} steps a mode; "
          f"{os.cpu_count()} CPUs, load {load_before[0]:.1f} before / {os.getloadavg()[0]:.1f} after\n")
    print("| mode | steps/s | s/step | rollout s | update s | engine idle | speed-up (steps/s) | rollout speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['steps_per_s']:.3f} | {r['step_s']:.2f} | {r['rollout_s']:.2f} | {r['update_s']:.2f} "
              f"| {r['engine_idle']:.0%} | {r['steps_per_s'] / sync_row['steps_per_s']:.2f}x "
              f"| {sync_row['rollout_s'] / r['rollout_s']:.2f}x |")
    traj, piped = rows[1], rows[2]
    print(f"\npipelined step {piped['step_s']:.2f} s vs max(rollout, update) "
          f"{max(traj['rollout_s'], traj['update_s']):.2f} s and their sum {traj['rollout_s'] + traj['update_s']:.2f} s "
          f"(trajectory mode's); tool calls per trajectory {traj['tool_calls_per_traj']:.1f}, reply tokens "
          f"{min(traj['response_tokens'])}-{max(traj['response_tokens'])} per trajectory")
    if args.json:
        info = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "python": platform.python_version(),
                "torch": torch.__version__, "cpus": os.cpu_count(), "load": [load_before, os.getloadavg()],
                "engine": name, "args": {k: str(v) for k, v in vars(args).items()}}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
