"""Kill and resume: a run stopped after its step-2 checkpoint and resumed ends bit-identical to one
that never stopped (weights, optimizer, scheduler, RNG and data position all restored)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainer_fixtures import (
    PAUSE_AT_STEP,
    PAUSE_MARKER,
    params_of,
    register_env_plugin,
    run_recipe,
    subprocess_env,
    tiny_config,
    tiny_overrides,
)

from agent_grpo.recipes.grpo import GRPORecipe
from agent_grpo.store import RunStore
from agent_grpo.train.checkpoint import latest_checkpoint
from agent_grpo.train.metrics import read_metrics

torch.set_num_threads(1)
STEPS = 3


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The `text-reward-test` environment, found through the entry-point group like an installed one."""
    root = register_env_plugin(tmp_path_factory.mktemp("plugin"))
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        yield root


@pytest.fixture(scope="module")
def uninterrupted(plugin, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    recipe = run_recipe(tiny_config(out, STEPS))
    return out, params_of(recipe.policy)


def checkpoint_tensors(out: Path, step: int) -> dict[str, torch.Tensor]:
    ckpt = out / "checkpoints" / f"step_{step:06d}"
    return {**load_file(str(ckpt / "model" / "model.safetensors")), **load_file(str(ckpt / "optimizer.safetensors"))}


def assert_same_run(out: Path, reference: Path) -> None:
    mine, ref = checkpoint_tensors(out, STEPS), checkpoint_tensors(reference, STEPS)
    assert mine.keys() == ref.keys()
    assert [k for k in ref if not torch.equal(mine[k], ref[k])] == []  # weights, Adam moments, RNG
    train_rows = lambda d: [r for r in read_metrics(d / "metrics.jsonl") if "reward" in r]  # noqa: E731
    assert [r["step"] for r in train_rows(out)] == [1, 2, 3]  # the killed run's rows of step 3 were dropped
    for a, b in zip(train_rows(out), train_rows(reference), strict=True):
        assert (a["reward"], a["loss"], a["grad_norm"], a["lr"]) == (b["reward"], b["loss"], b["grad_norm"], b["lr"])
    ids = [r.id for r in RunStore.open(out / "trajectories").rows]
    assert len(ids) == len(set(ids)) == STEPS * 2 * 3  # steps x tasks x G, none stored twice
    assert ids == [r.id for r in RunStore.open(reference / "trajectories").rows]


def test_the_reference_run_learns_something(uninterrupted):
    out, _ = uninterrupted
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "reward" in r]
    assert len(rows) == STEPS
    assert all(r["grad_norm"] > 0 and r["zero_variance_groups"] < 1 for r in rows)  # real advantages
    assert rows[0]["lr"] != rows[-1]["lr"]  # warmup + cosine: the scheduler matters


def test_crash_before_the_step_3_checkpoint_then_a_new_recipe_resumes(uninterrupted, tmp_path):
    reference, params = uninterrupted
    cfg = tiny_config(tmp_path, STEPS)
    recipe = GRPORecipe(cfg, progress=False)
    recipe.setup()
    save = recipe.save

    def crash_at_step_3():
        if recipe.step == 3:  # step 3's trajectories and metrics are written, its checkpoint is not
            raise RuntimeError("killed")
        save()

    recipe.save = crash_at_step_3
    with pytest.raises(RuntimeError, match="killed"):
        recipe.train()
    recipe.cleanup()
    assert latest_checkpoint(tmp_path).name == "step_000002"
    assert read_metrics(tmp_path / "metrics.jsonl")[-1]["step"] == 3

    resumed = GRPORecipe(cfg, progress=False)
    resumed.setup()
    assert (resumed.step, resumed.data_position) == (2, 4)
    resumed.train()
    resumed.cleanup()
    after = params_of(resumed.policy)
    assert [k for k in params if not torch.equal(after[k], params[k])] == []
    assert_same_run(tmp_path, reference)


def agent_grpo_train() -> list[str]:
    script = Path(sys.executable).with_name("agent-grpo")
    return [str(script), "train"] if script.exists() else [sys.executable, "-m", "agent_grpo.cli.main", "train"]


@pytest.mark.slow
def test_sigkill_mid_step_3_then_resume_with_the_cli(uninterrupted, plugin, tmp_path):
    reference, _ = uninterrupted
    out, marker = tmp_path / "run", tmp_path / "paused"
    command = [*agent_grpo_train(), "--no-progress", *(f"--set={o}" for o in tiny_overrides(out, STEPS))]
    env = subprocess_env(plugin, **{PAUSE_AT_STEP: "2", PAUSE_MARKER: str(marker)})
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate(timeout=5)[0].decode()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)  # in the middle of step 3's rollout
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert latest_checkpoint(out).name == "step_000002"

    done = subprocess.run(command, env=subprocess_env(plugin), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resumed from" in done.stdout and "step_000002" in done.stdout
    assert_same_run(out, reference)


def test_lora_run_resumes_from_its_adapter_checkpoint(plugin, tmp_path):
    lora = ("model.lora=true", "model.lora_r=4", "model.freeze_vision=true")
    straight = run_recipe(tiny_config(tmp_path / "straight", 2, *lora))
    assert (tmp_path / "straight/checkpoints/step_000002/model/adapter_model.safetensors").exists()

    cfg = tiny_config(tmp_path / "resumed", 2, *lora)
    first = GRPORecipe(cfg, progress=False)
    first.setup()
    first.cfg = cfg.model_copy(update={"steps": 1})  # stop after the step-1 checkpoint
    first.train()
    first.cleanup()
    resumed = run_recipe(cfg)
    assert resumed.step == 2
    want, got = params_of(straight.policy), params_of(resumed.policy)
    assert [k for k in want if not torch.equal(want[k], got[k])] == []
    assert any("lora_B" in k and want[k].abs().sum() > 0 for k in want)  # the adapters did train


def test_truncated_newest_checkpoint_resumes_from_the_previous_one(uninterrupted, tmp_path):
    """The step-3 checkpoint is damaged: resume says so, redoes step 3 from step 2, and the run's
    trajectories and metrics hold step 3 once (the stopped run's copies are moved aside, not lost)."""
    import io

    from rich.console import Console

    reference, _ = uninterrupted
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    weights = out / "checkpoints" / "step_000003" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (out / "checkpoints" / ".tmp_step_000003").mkdir()  # and a save killed earlier
    log = io.StringIO()
    resumed = GRPORecipe(tiny_config(out, STEPS), console=Console(file=log, width=300), progress=False)
    resumed.setup()
    assert resumed.step == 2
    text = log.getvalue()
    assert "step_000003 is incomplete" in text and "truncated" in text and "resumed from" in text
    assert not list((out / "checkpoints").glob(".tmp_*"))
    resumed.train()
    resumed.cleanup()
    assert_same_run(out, reference)
    moved = list((out / "trajectories" / "superseded").glob("*.jsonl"))
    assert len(moved) == 1 and len(moved[0].read_text().splitlines()) == 2 * 3  # step 3's tasks x G
    assert [r["step"] for r in read_metrics(out / "metrics.superseded.jsonl")] == [3, 3]  # train + eval rows
