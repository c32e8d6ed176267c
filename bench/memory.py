"""Resident memory over a run (issue 19): peak, growth per step after warm-up, and what holds it.

Each scenario runs in its own process (so one's peak does not hide another's), samples the process's
resident set size (RSS) every 0.1 s, and at the end says which component holds what:

- `grpo`:  GRPO steps of the tiny model on visual-search, with tool calls forced through the real
  model (the scripted demonstrator's turns, so every step zooms and crops like a trained policy);
  RSS after each step, fitted over the steps after warm-up (slope = growth per step). Run with a
  1k-task and a 50k-task train split: memory must not depend on the split's size.
- `sft-large`: scripted SFT demonstrations on multi-megapixel canvases (visual-search at 2240 px, 5 MP),
  then SFT steps; with N and N/4 demonstrations: memory must not grow with N.
- `demo`:  the demo pipeline (`agent-grpo demo`), peak per stage; `--quick` runs its smoke size, the full
  demo only with `--full-demo` (about 15-30 minutes here).

    python bench/memory.py                      # grpo 60 steps x {1k, 50k} tasks, sft-large, demo --quick
    python bench/memory.py --quick              # under a minute: grpo and sft-large, one tiny run each (CI)
    python bench/memory.py --scenarios grpo --steps 100 --json bench/results/memory.json

Components: `model+optimizer` (parameter, gradient and optimizer-state tensors), the image caches of
`agent_grpo.pixels` (decoded pixels, model views) and of the HF engine (preprocessed patches), the
demonstrations' own image bytes (PNG in memory, pinned pixels), and the rest of the process (Python,
libraries, allocator slack). Numbers are MiB.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
MB = 2**20


class Sampler:
    """RSS of this process every `interval` seconds, labelled with the current phase."""

    def __init__(self, interval: float = 0.1):
        self.proc = psutil.Process()
        self.interval = interval
        self.phase = "start"
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> float:
        return self.proc.memory_info().rss / MB

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> float:
        value = self.rss()
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), value)
        return value

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def tensor_mb(model, optimizer=None) -> float:
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    total += sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    if optimizer is not None:
        for state in optimizer.state.values():
            total += sum(v.numel() * v.element_size() for v in state.values() if hasattr(v, "numel"))
    return total / MB


def image_bytes_held(trajs) -> dict[str, float]:
    """Bytes the trajectories' image parts keep themselves: pinned decoded pixels, in-memory PNG bytes."""
    from agent_grpo.pixels import image_nbytes
    from agent_grpo.store import image_parts

    pinned, png, seen = 0, 0, set()
    for t in trajs:
        for part in image_parts(t):
            if id(part) in seen:
                continue
            seen.add(id(part))
            if part._pil is not None:
                pinned += image_nbytes(part._pil)
            elif part._load is not None:
                png += getattr(part._load, "nbytes", 0)
    return {"demonstrations_pinned_pixels": pinned / MB, "demonstrations_png_bytes": png / MB}


def cache_components(engine=None) -> dict[str, float]:
    from agent_grpo import pixels

    out = {"decoded_images_cache": pixels.DECODED.bytes / MB, "model_views_cache": pixels.VIEWS.bytes / MB}
    if engine is not None and hasattr(engine, "cache_metrics"):
        out["engine_image_cache"] = engine.cache_metrics()["memory/engine_image_cache_mb"]
    return out


def slope(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope of ys over xs, and the residuals' standard deviation."""
    n = len(xs)
    if n < 2:
        return 0.0, 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    res = [y - (my + b * (x - mx)) for x, y in zip(xs, ys, strict=True)]
    return b, (sum(r * r for r in res) / max(1, n - 2)) ** 0.5


# ---- scenarios (each in its own process) -------------------------------------------------------------


class ForcedTurns:
    """`HFEngine(logits_processors=...)`: every row follows the scripted demonstrator's turn for its task,
    generated by the real model (its forward, its caches), so GRPO steps zoom like a trained policy."""

    def __init__(self, env, chat, quality: float = 0.5):
        import numpy as np
        from agent_grpo_envs.visual_search import scripted_turns

        self.env, self.chat, self.quality = env, chat, quality
        self.scripted_turns, self.np = scripted_turns, np
        self.fill = chat.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self._turns: dict[str, list[list[int]]] = {}

    def _task(self, key: str):
        # keys are <tag><task id>-<k>, task ids visual-search-<split>-<seed>-<index>
        body = key[key.index("visual-search-"):].rsplit("-", 1)[0]
        _, _, split, seed, index = body.split("-")
        return self.env.make_task(split, int(index), int(seed))

    def __call__(self, requests, width):
        import torch
        from transformers import LogitsProcessorList

        rows = []
        for r in requests:
            if r.key not in self._turns:
                rng = self.np.random.default_rng(zlib.crc32(r.key.encode()))
                turns = self.scripted_turns(self._task(r.key), self.quality, rng)
                self._turns[r.key] = [self.chat.tokenizer.encode(t, add_special_tokens=False) for t in turns]
            turns = self._turns[r.key]
            rows.append(turns[r.turn] if r.turn < len(turns) else [self.fill])
        if len(self._turns) > 4096:  # keys of past steps
            self._turns.clear()

        def force(input_ids, scores):
            step = input_ids.shape[1] - width
            out = torch.full_like(scores, float("-inf"))
            for b, ids in enumerate(rows):
                out[b, ids[step] if step < len(ids) else self.fill] = 0.0
            return out

        return LogitsProcessorList([force])


def scenario_grpo(args) -> dict:
    import torch

    from agent_grpo.recipes.grpo import GRPORecipe
    from agent_grpo.train.config import TrainConfig

    torch.set_num_threads(1)
    out = Path(tempfile.mkdtemp(prefix="bench-memory-grpo-"))
    cfg = TrainConfig.model_validate({
        "out_dir": str(out), "seed": 0, "steps": args.steps, "save_every": args.steps + 1, "keep_checkpoints": 1,
        "model": {"path": "tiny"}, "tensorboard": False,
        "env": {"name": "visual-search", "num_train_tasks": args.tasks, "num_eval_tasks": 1},
        "rollout": {"tasks_per_step": args.tasks_per_step, "group_size": args.group_size, "max_total_tokens": 1024,
                    "sampling": {"max_new_tokens": 96, "temperature": 1.0}},
        "optim": {"lr": 1e-4},
        # Caps small enough to fill during warm-up (one new canvas a step would take the default 256 MB of
        # decoded pixels 80 steps to fill): after that, what is left to grow is whatever is not capped.
        "memory": {"decoded_images_mb": args.cache_mb, "model_views_mb": args.cache_mb / 4,
                   "engine_image_cache_mb": args.cache_mb / 4},
    })
    with Sampler() as sampler:
        sampler.phase = "setup"
        recipe = GRPORecipe(cfg, progress=False)
        recipe.setup()
        recipe.engine.logits_processors = ForcedTurns(recipe.env, recipe.chat)
        sampler.phase = "steps"
        recipe.train()  # logs memory/rss_mb after every step (recipes/grpo.py)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        rows = [r for r in rows if "memory/rss_mb" in r]
        per_step = [r["memory/rss_mb"] for r in rows]
        calls = [r.get("tool_calls_per_traj", 0.0) for r in rows]
        components = {"model+optimizer": tensor_mb(recipe.policy, recipe.optimizer), **cache_components(recipe.engine)}
        recipe.cleanup()
    shutil.rmtree(out, ignore_errors=True)
    warm = min(args.warmup, max(0, len(per_step) - 2))
    b, noise = slope(list(range(warm, len(per_step))), per_step[warm:])
    half = len(per_step) // 2
    late, _ = slope(list(range(half, len(per_step))), per_step[half:])
    return {"scenario": "grpo", "tasks": args.tasks, "steps": len(per_step), "warmup": warm, "rss_per_step": per_step,
            "peak_mb": max(sampler.peaks.values()), "peaks": sampler.peaks, "growth_mb_per_step": b,
            "growth_late_mb_per_step": late, "noise_mb": noise, "tool_calls_per_traj": sum(calls) / max(1, len(calls)), "components": components,
            "final_rss_mb": per_step[-1] if per_step else sampler.rss()}


def scenario_sft_large(args) -> dict:
    import torch

    from agent_grpo.recipes.sft import SFTConfig, SFTRecipe

    torch.set_num_threads(1)
    out = Path(tempfile.mkdtemp(prefix="bench-memory-sft-"))
    cfg = SFTConfig.model_validate({
        "out_dir": str(out), "seed": 0, "steps": args.sft_steps, "batch_size": 2, "save_every": args.sft_steps,
        "keep_checkpoints": 1, "model": {"path": "tiny"}, "tensorboard": False,
        "env": {"name": "visual-search", "num_train_tasks": args.demos, "num_eval_tasks": 2,
                "options": {"config": {"canvas_size": args.canvas, "train_size": args.demos}}},
        "data": {"source": "scripted", "quality": 0.5, "max_total_tokens": 1024, "max_new_tokens": 96},
        "eval": {"rollouts": False},
    })
    with Sampler() as sampler:
        sampler.phase = "setup (model, demonstrations)"
        recipe = SFTRecipe(cfg, progress=False)
        recipe.setup()
        after_setup = sampler.sample()
        sampler.phase = "sft steps"
        recipe.train()
        components = {"model+optimizer": tensor_mb(recipe.model, recipe.optimizer), **cache_components(),
                      **image_bytes_held(recipe.data.train + recipe.data.eval)}
        recipe.cleanup()
    shutil.rmtree(out, ignore_errors=True)
    return {"scenario": "sft-large", "demos": len(recipe.data.train), "canvas": args.canvas,
            "megapixels": args.canvas**2 / 1e6, "peak_mb": max(sampler.peaks.values()), "peaks": sampler.peaks,
            "after_setup_mb": after_setup, "components": components, "final_rss_mb": sampler.rss()}


def scenario_demo(args) -> dict:
    from agent_grpo.cli.demo import QUICK
    from agent_grpo.recipes import pipeline as P
    from agent_grpo.recipes.demos import demo_config

    out = Path(tempfile.mkdtemp(prefix="bench-memory-demo-"))
    overrides = ([] if args.full_demo else list(QUICK)) + [f"out_dir={out}"]
    cfg = P.load_pipeline_config(demo_config(), overrides)
    pipe = P.Pipeline(cfg, progress=False)
    with Sampler() as sampler:
        for name in ("evaluate", "train"):  # label the sampler's phase with the stage running
            original = getattr(pipe, name)

            def labelled(stage, *a, _original=original, _name=name):
                sampler.phase = f"{_name} {stage}"
                return _original(stage, *a)

            setattr(pipe, name, labelled)
        pipe.run()
        sampler.phase = "plots and report"
    return {"scenario": "demo", "full": bool(args.full_demo), "peak_mb": max(sampler.peaks.values()),
            "peaks": sampler.peaks, "results": [r.accuracy for r in pipe.results], "final_rss_mb": sampler.rss()}


SCENARIOS = {"grpo": scenario_grpo, "sft-large": scenario_sft_large, "demo": scenario_demo}


# ---- driver --------------------------------------------------------------------------------------------


def run_child(name: str, extra: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_path = f.name
    cmd = [sys.executable, __file__, "--child", name, "--child-out", result_path, *extra]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"scenario {name} failed (exit {proc.returncode})")
    result = json.loads(Path(result_path).read_text())
    os.unlink(result_path)
    result["wall_s"] = round(time.time() - t0, 1)
    return result


def table(results: list[dict]) -> str:
    lines = ["| scenario | size | peak RSS (MiB) | growth / step after warm-up (MiB) | what holds it at the end (MiB) |",
             "| --- | --- | --- | --- | --- |"]
    for r in results:
        if r["scenario"] == "grpo":
            size = f"{r['tasks']:,} train tasks, {r['steps']} steps ({r['tool_calls_per_traj']:.1f} zooms / traj)"
            growth = (f"{r['growth_mb_per_step']:+.2f} (steps {r['warmup']}-{r['steps']}; residual sd {r['noise_mb']:.1f}); "
                      f"second half {r.get('growth_late_mb_per_step', float('nan')):+.2f}")
        elif r["scenario"] == "sft-large":
            size = f"{r['demos']} demos of {r['canvas']} px ({r['megapixels']:.1f} MP) canvases"
            growth = f"after demos: {r['after_setup_mb']:.0f}"
        else:
            size = "full demo" if r["full"] else "demo --quick"
            growth = "; ".join(f"{k}: {v:.0f}" for k, v in r["peaks"].items())
        parts = r.get("components", {})
        held = ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
        if parts:
            held += f", rest of the process {r['final_rss_mb'] - sum(parts.values()):.0f}"
        lines.append(f"| {r['scenario']} | {size} | {r['peak_mb']:.0f} | {growth} | {held} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="seconds: every scenario at tiny sizes (CI)")
    ap.add_argument("--scenarios", default="grpo,sft-large,demo", help="comma-separated: grpo, sft-large, demo")
    ap.add_argument("--steps", type=int, default=60, help="grpo: steps per run")
    ap.add_argument("--warmup", type=int, default=10, help="grpo: steps left out of the growth fit")
    ap.add_argument("--sizes", default="1000,50000", help="grpo: train split sizes to compare")
    ap.add_argument("--tasks-per-step", type=int, default=1, help="grpo: tasks (groups) per step")
    ap.add_argument("--group-size", type=int, default=2, help="grpo: trajectories per task")
    ap.add_argument("--cache-mb", type=float, default=32, help="grpo: decoded-pixel cache (views, engine: a quarter)")
    ap.add_argument("--demos", default="200,50", help="sft-large: demonstrations to compare")
    ap.add_argument("--canvas", type=int, default=2240, help="sft-large: canvas side, pixels")
    ap.add_argument("--sft-steps", type=int, default=20)
    ap.add_argument("--full-demo", action="store_true", help="demo: the full demo instead of its --quick size")
    ap.add_argument("--json", type=Path, help="save the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    ap.add_argument("--tasks", type=int, default=1000, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        args.demos = int(args.demos.split(",")[0])
        result = SCENARIOS[args.child](args)
        Path(args.child_out).write_text(json.dumps(result))
        return

    if args.quick:  # one small run per scenario (the demo's own smoke run is `agent-grpo demo --quick`)
        args.steps, args.warmup, args.sizes, args.demos, args.canvas, args.sft_steps = 2, 0, "100", "2", 560, 1
        if args.scenarios == ap.get_default("scenarios"):
            args.scenarios = "grpo,sft-large"
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; choose from {sorted(SCENARIOS)}")
    common = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--canvas", str(args.canvas),
              "--sft-steps", str(args.sft_steps), "--tasks-per-step", str(args.tasks_per_step),
              "--group-size", str(args.group_size), "--cache-mb", str(args.cache_mb)] + (["--full-demo"] if args.full_demo else [])
    results = []
    for name in names:
        if name == "grpo":
            runs = [["--tasks", s] for s in args.sizes.split(",")]
        elif name == "sft-large":
            runs = [["--demos", d] for d in args.demos.split(",")]
        else:
            runs = [[]]
        for extra in runs:
            print(f"running {name} {' '.join(extra)} ...", flush=True)
            results.append(run_child(name, common + extra))
    print()
    print(table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"date": datetime.date.today().isoformat(), "cpus": os.cpu_count(), "platform": platform.platform(),
                "load": os.getloadavg(), "args": {k: str(v) for k, v in vars(args).items()}}
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
