"""Ablation of the demo pipeline (issue 6): where does GRPO's gain come from?

Variants, each run as the full `agent-grpo demo` pipeline (same checkpoint, same held-out tasks):
- `no_tools`:      no tool is offered; SFT demonstrations answer from the full view (`direct_turns`)
- `no_efficiency`: tools, rubric without the tool-efficiency reward (`tool_cost=0`)
- `full`:          tools, the full rubric (format + accuracy + tool bonus + tool efficiency)
- `box_in_question`: `full` on the earlier task, whose question names the cell and gives its box (three red
                   squares, full view 112 px): copying a box instead of finding the square, for contrast

    .venv/bin/python bench/ablation.py --seeds 0 1 2 --jobs 2 --out runs/ablation   # the main job's (find) task
    .venv/bin/python bench/ablation.py --summarize-only --out runs/ablation   # re-read finished runs
    .venv/bin/python bench/ablation.py --quick   # one tiny run of every stage, in a temporary folder (CI)
    .venv/bin/python bench/ablation.py --config envs/agent_grpo_envs/visual_search/demo.yaml \
        --variants no_tools no_efficiency full --out runs/ablation_boxed   # the box-in-the-question demo (issue 6)

Prints a markdown table (mean +- std over seeds of held-out accuracy after SFT and after GRPO, the
gain, zoom calls, needless zooms and zoom IoU) and writes ablation.md, ablation.json and
ablation_curves.png (training curves per variant, averaged over seeds) into `--out`.
A finished run is reused, so an interrupted ablation resumes where it stopped; `full` reuses the SFT
stage of `no_efficiency` with the same seed (identical demonstrations and settings).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

VARIANTS: dict[str, list[str]] = {
    "no_tools": [
        "sft.env.allow_tools=false", "grpo.env.allow_tools=false",
        "sft.data.policy=agent_grpo_envs.visual_search.policy:direct_turns",
    ],
    "no_efficiency": ["env_options.config.tool_cost=0"],
    "full": [],
    # The earlier task, for contrast: the question names the cell and gives its box, three red squares.
    "box_in_question": ["env_options.config.names_cell=true", "env_options.config.red_squares=3",
                        "env_options.config.full_view=112"],
}


# Variants whose SFT stage is identical (same demonstrations, same seed): the later one reuses it.
SHARES_SFT = {"full": "no_efficiency"}


# --quick: one variant, one seed, the demo's own quick sizes made smaller still (a smoke run of every stage).
QUICK_VARIANTS = ["full"]
QUICK_SETS = ["eval.n=2", "sft.steps=2", "sft.save_every=2", "grpo.steps=1", "grpo.save_every=1"]


def check_variants(variants: list[str], extra: list[str], config: Path | None = None) -> None:
    """Every run's settings must resolve before hours are spent on the first ones (a renamed key fails here)."""
    from agent_grpo.recipes.demos import demo_config
    from agent_grpo.recipes.pipeline import load_pipeline_config

    for variant in variants:
        load_pipeline_config(config or demo_config(), [*VARIANTS[variant], "sft.seed=0", "grpo.seed=0", *extra])


def run_one(
    out: Path, variant: str, seed: int, extra: list[str], quick: bool = False, config: Path | None = None
) -> tuple[str, int, float, int]:
    folder = out / f"{variant}_s{seed}"
    if (folder / "results.json").exists():
        return variant, seed, 0.0, 0
    donor = out / f"{SHARES_SFT.get(variant, '')}_s{seed}"
    if variant in SHARES_SFT and (donor / "eval_sft" / "result.json").exists() and not (folder / "sft").exists():
        for stage in ("eval_start", "sft", "eval_sft"):
            shutil.copytree(donor / stage, folder / stage)
    sets = [*VARIANTS[variant], f"sft.seed={seed}", f"grpo.seed={seed}", *extra]
    cmd = [sys.executable, "-m", "agent_grpo.cli.main", "demo", "--out", str(folder), "--no-progress",
           *(["--quick"] if quick else []), *(["--config", str(config)] if config else [])]
    for s in sets:
        cmd += ["--set", s]
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(folder / "log.txt", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
    return variant, seed, time.time() - t0, rc


def _stats(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def _metric(result: dict, name: str) -> float:
    """An environment column of a results.json row (under "metrics"; at the top level in older runs)."""
    return result.get("metrics", {}).get(name, result.get(name)) or 0.0


def summarize(out: Path, seeds: list[int]) -> dict:
    rows, data = [], {}
    for variant in VARIANTS:
        per_seed = []
        for seed in seeds:
            path = out / f"{variant}_s{seed}" / "results.json"
            if path.exists():
                results = {r["name"]: r for r in json.loads(path.read_text())}
                per_seed.append((seed, results))
        if not per_seed:
            continue
        sft = [r["after SFT"]["accuracy"] for _, r in per_seed if "after SFT" in r]
        grpo = [r["after GRPO"]["accuracy"] for _, r in per_seed]
        gain = [r["after GRPO"]["accuracy"] - r["after SFT"]["accuracy"] for _, r in per_seed if "after SFT" in r]
        calls = [r["after GRPO"]["calls_per_traj"] for _, r in per_seed]
        needless = [_metric(r["after GRPO"], "needless_zooms") for _, r in per_seed]
        iou = [_metric(r["after GRPO"], "zoom_cell_iou") for _, r in per_seed]
        sft_needless = [_metric(r["after SFT"], "needless_zooms") for _, r in per_seed if "after SFT" in r]
        n_tasks = per_seed[0][1]["after GRPO"]["tasks"]
        data[variant] = {"seeds": [s for s, _ in per_seed], "sft_accuracy": sft, "grpo_accuracy": grpo, "gain": gain,
                         "calls": calls, "needless": needless, "sft_needless": sft_needless, "zoom_iou": iou,
                         "tasks": n_tasks}
        rows.append(f"| {variant} | {len(per_seed)} | {n_tasks} | {_stats(sft)} | {_stats(grpo)} | {_stats(gain)} | "
                    f"{_stats(calls)} | {_stats(sft_needless)} -> {_stats(needless)} | {_stats(iou)} |")
    head = ("| variant | seeds | held-out tasks | accuracy after SFT | accuracy after GRPO | gain | zoom calls / traj "
            "| needless zooms / traj (SFT -> GRPO) | zoom IoU (cell) |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    table = head + "\n" + "\n".join(rows)
    (out / "ablation.md").write_text(table + "\n")
    (out / "ablation.json").write_text(json.dumps(data, indent=2) + "\n")
    return {"table": table, "data": data}


def plot(out: Path, seeds: list[int]) -> Path | None:
    """Training curves per variant, the mean over seeds at each step."""
    from agent_grpo.plots import plot_curves
    from agent_grpo.train.metrics import read_metrics

    runs = {}
    for variant in VARIANTS:
        per_step: dict[int, list[dict]] = {}
        for seed in seeds:
            path = out / f"{variant}_s{seed}" / "grpo" / "metrics.jsonl"
            if path.exists():
                for row in read_metrics(path):
                    per_step.setdefault(row["step"], []).append(row)
        if per_step:
            runs[variant] = [
                {"step": step, **{k: statistics.mean(r[k] for r in rows if k in r)
                                  for k in {k for r in rows for k in r} if k != "step"
                                  and all(isinstance(r.get(k, 0.0), (int, float)) for r in rows)}}
                for step, rows in sorted(per_step.items())
            ]
    if not runs:
        return None
    panels = [("reward/accuracy", "accuracy (train rollouts)"), ("tool_calls_per_traj", "zoom calls / trajectory"),
              ("needless_zooms", "needless zooms / trajectory"), ("zoom_cell_iou", "zoom IoU with target cell")]
    return plot_curves(runs, panels, out / "ablation_curves.png", title=f"GRPO ablation, mean of {len(seeds)} seeds")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/ablation"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (each uses one CPU thread)")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="override for every run, e.g. grpo.steps=60")
    ap.add_argument("--config", type=Path, default=None, help="pipeline YAML (default: the main job's, demo_find.yaml); e.g. demo.yaml")
    ap.add_argument("--summarize-only", action="store_true")
    ap.add_argument("--quick", action="store_true", help="one variant, one seed, a few steps (what CI runs; output in a "
                    "temporary folder unless --out is given)")
    args = ap.parse_args()
    temporary = None
    if args.quick:
        args.seeds, args.variants, args.extra = [0], QUICK_VARIANTS, [*QUICK_SETS, *args.extra]
        if args.out == Path("runs/ablation"):
            temporary = tempfile.TemporaryDirectory()
            args.out = Path(temporary.name)
    check_variants(args.variants, args.extra, args.config)

    failed = False
    if not args.summarize_only:
        # Two rounds: the variants that share their SFT stage run after the one that makes it.
        first = [v for v in args.variants if v not in SHARES_SFT]
        rounds = [[(v, s) for s in args.seeds for v in first], [(v, s) for s in args.seeds for v in SHARES_SFT
                                                                 if v in args.variants]]
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for jobs in rounds:
                runs = pool.map(lambda j: run_one(args.out, j[0], j[1], args.extra, args.quick, args.config), jobs)
                for variant, seed, seconds, rc in runs:
                    status = "ok" if rc == 0 else f"FAILED (exit {rc}, see {args.out}/{variant}_s{seed}/log.txt)"
                    print(f"{variant} seed {seed}: {status} in {seconds:.0f} s", flush=True)
                    if rc != 0:
                        failed = True
    summary = summarize(args.out, args.seeds)
    picture = plot(args.out, args.seeds)
    print(summary["table"])
    if picture:
        print(f"curves: {picture}")
    if failed:
        if args.quick:
            for log in args.out.glob("*/log.txt"):
                print(f"---- {log}\n{log.read_text()[-4000:]}")
        sys.exit(1)
    if temporary is not None:
        temporary.cleanup()


if __name__ == "__main__":
    main()
