"""`agent-grpo demo --quick`: every stage of the proof-of-learning pipeline runs and leaves its outputs.

A smoke test of the plumbing (checkpoints, metrics, results table, plots, report, resumption), not of
learning: the learning numbers are in BENCHMARKS.md ("Proof of learning").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from agent_grpo.errors import ConfigError
from agent_grpo.plots import plot_curves
from agent_grpo.recipes.pipeline import load_pipeline_config
from agent_grpo.train.metrics import read_metrics

BIN = Path(sys.executable).parent / "agent-grpo"


def demo(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(BIN), "demo", *args], capture_output=True, text=True, env=env, timeout=600, check=False)


@pytest.mark.slow
def test_quick_demo_produces_checkpoints_metrics_plots_and_report(tmp_path):
    out = tmp_path / "demo"
    done = demo("--quick", "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr

    results = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in results] == ["pretrained (no SFT)", "after SFT", "after GRPO"]
    assert all(r["tasks"] == 8 and 0.0 <= r["accuracy"] <= 1.0 for r in results)
    table = (out / "results.md").read_text().splitlines()
    assert len(table) == 2 + 3 and "after GRPO" in table[-1]
    assert "after GRPO" in done.stdout  # the table is printed too

    # the shipped checkpoint was the start; each stage left a loadable checkpoint
    config = json.loads((out / "config.json").read_text())
    assert Path(config["start"]).is_absolute() and (Path(config["start"]) / "model.safetensors").exists()
    for stage, step in (("sft", 4), ("grpo", 2)):
        model = out / stage / "checkpoints" / f"step_{step:06d}" / "model"
        assert (model / "model.safetensors").exists() and (model / "config.json").exists()
    metrics = read_metrics(out / "grpo" / "metrics.jsonl")
    assert [m["step"] for m in metrics if "reward" in m] == [1, 2]
    assert len(read_metrics(out / "sft" / "metrics.jsonl")) >= 4

    for name in ("curves_grpo.png", "curves_sft.png"):
        with Image.open(out / name) as png:
            assert png.format == "PNG" and png.width >= 400 and png.height >= 300
    report = (out / "report.html").read_text()
    assert "data:image/" in report and "after GRPO" in report  # the image chains, embedded
    assert (out / "eval_grpo" / "trajectories" / "trajectories.jsonl").read_text().count("\n") == 8

    # a second run resumes: every stage is found finished and nothing is redone
    before = (out / "grpo" / "metrics.jsonl").read_text()
    again = demo("--quick", "--out", str(out), "--no-progress")
    assert again.returncode == 0, again.stderr
    assert (out / "grpo" / "metrics.jsonl").read_text() == before
    assert json.loads((out / "results.json").read_text()) == results


def test_pipeline_config_resolves_the_shipped_checkpoint_and_names_bad_keys(tmp_path):
    from agent_grpo.cli.demo import QUICK
    from agent_grpo.recipes.demos import demo_config

    cfg = load_pipeline_config(demo_config(), QUICK)
    assert Path(cfg.start).is_absolute() and (Path(cfg.start) / "pretrain_report.json").exists()
    assert cfg.sft.steps == 4 and cfg.grpo.steps == 2 and cfg.eval.n == 8
    with pytest.raises(ConfigError, match="grpo.rollout.group_sise: unknown setting; did you mean grpo.rollout.group_size"):
        load_pipeline_config(demo_config(), ["grpo.rollout.group_sise=4"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_pipeline_config(tmp_path / "missing.yaml")
    (tmp_path / "no_start.yaml").write_text("sft: {}\ngrpo: {}\n")
    with pytest.raises(ConfigError, match="start: Field required"):
        load_pipeline_config(tmp_path / "no_start.yaml")


def test_find_config_starts_from_the_locating_checkpoint_on_the_scenes_it_learned():
    """demo_find.yaml's environment is the find variant its checkpoint was pretrained to locate in."""
    from agent_grpo_envs import VisualSearchConfig
    from agent_grpo_envs.visual_search import pretrain as P

    from agent_grpo.recipes.demos import demo_config

    cfg = load_pipeline_config(demo_config("visual-search-find"))
    report = json.loads((Path(cfg.start) / "pretrain_report.json").read_text())
    assert Path(cfg.start).name == "perception_find" and report["locate_steps"] > 0
    scenes = VisualSearchConfig(**cfg.env_options["config"])
    assert {k: getattr(scenes, k) for k in P.FIND_SCENES} == P.FIND_SCENES
    assert report["data"]["find_generator"] == VisualSearchConfig(**P.FIND_SCENES).model_dump(mode="json")
    assert cfg.sft.env.name == cfg.grpo.env.name == "visual-search"


def test_plot_curves_writes_a_png_and_skips_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": i, "reward": i / 10, "loss": 1 / i} for i in range(1, 21)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 21, "rew')  # killed mid-write
    assert read_metrics(path) == rows
    png = plot_curves({"run": path, "other": rows[:3]}, [("reward", "reward"), ("loss", "loss"), ("absent", "x")],
                      tmp_path / "curves.png", title="t")
    with Image.open(png) as img:
        assert img.format == "PNG" and img.width > img.height


def test_the_thread_count_is_the_configs_and_the_main_job_names_the_one_its_results_were_made_with(
    tmp_path, monkeypatch
):
    """Results depend slightly on the torch thread count, so a demo config fixes it (not "all cores")."""
    import torch
    from rich.console import Console

    from agent_grpo.cli.demo import QUICK
    from agent_grpo.recipes import pipeline as P
    from agent_grpo.recipes.demos import demo_config

    assert load_pipeline_config(demo_config()).torch_threads == 2  # BENCHMARKS.md "The main job as shipped"
    assert load_pipeline_config(demo_config("visual-search-boxed")).torch_threads == 1  # its results: 1 thread
    assert load_pipeline_config(demo_config(), QUICK).torch_threads == 1  # a smoke run, as tests are
    with pytest.raises(ConfigError, match="torch_threads"):
        load_pipeline_config(demo_config(), ["torch_threads=0"])

    seen = []

    def first_stage(self, *args):
        seen.append(torch.get_num_threads())
        raise KeyboardInterrupt  # stop before any work

    monkeypatch.setattr(P.Pipeline, "evaluate", first_stage)
    monkeypatch.setattr(P.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    cfg = load_pipeline_config(demo_config(), [*QUICK, "torch_threads=2", f"out_dir={tmp_path / 'run'}"])
    console = Console(record=True, width=200)
    before = torch.get_num_threads()
    try:
        with pytest.raises(KeyboardInterrupt):
            P.Pipeline(cfg, console=console, progress=False).run()
    finally:
        torch.set_num_threads(before)
    assert seen == [2]
    assert "torch_threads=2 but this process may use 1 CPU(s)" in console.export_text()
