"""`rollout.max_staleness: 1`: step k+1 is sampled during step k's update, one policy version behind; a run
killed mid-step and resumed ends bit-identical to one that never stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import torch
from test_recipe_resume import agent_grpo_train, checkpoint_tensors
from trainer_fixtures import (
    PAUSE_AT_STEP,
    PAUSE_MARKER,
    register_env_plugin,
    run_recipe,
    subprocess_env,
    tiny_config,
    tiny_overrides,
)

from agent_grpo.errors import ConfigError
from agent_grpo.recipes.grpo import GRPORecipe
from agent_grpo.recipes.prefetch import pending_dir
from agent_grpo.store import RunStore
from agent_grpo.train.checkpoint import latest_checkpoint
from agent_grpo.train.metrics import read_metrics

torch.set_num_threads(1)
STEPS = 3
PIPELINED = ("rollout.max_staleness=1",)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    root = register_env_plugin(tmp_path_factory.mktemp("plugin"))
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        yield root


@pytest.fixture(scope="module")
def straight(plugin, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    run_recipe(tiny_config(out, STEPS, *PIPELINED))
    return out


def train_rows(out):
    return [r for r in read_metrics(out / "metrics.jsonl") if "reward" in r]


def assert_same_run(out, reference) -> None:
    mine, ref = checkpoint_tensors(out, STEPS), checkpoint_tensors(reference, STEPS)
    assert mine.keys() == ref.keys()
    assert [k for k in ref if not torch.equal(mine[k], ref[k])] == []  # weights, Adam moments, RNG
    assert [r["step"] for r in train_rows(out)] == [1, 2, 3]
    for a, b in zip(train_rows(out), train_rows(reference), strict=True):
        keys = ("reward", "loss", "grad_norm", "lr", "staleness", "is_weight", "is_weight/max")
        assert [a[k] for k in keys] == [b[k] for k in keys]
    rows = lambda d: [(r.id, r.reward) for r in RunStore.open(d / "trajectories").rows]  # noqa: E731
    assert rows(out) == rows(reference) and len(rows(out)) == STEPS * 2 * 3
    assert not any((out / "pending").iterdir())  # every prefetched rollout was trained on and dropped


def test_rollouts_are_one_policy_version_behind_and_say_so(straight):
    rows = train_rows(straight)
    assert [r["staleness"] for r in rows] == [0.0, 1.0, 1.0]
    assert all(0 < r["is_weight"] <= r["is_weight/max"] <= 2.0 and 0 <= r["is_weight/clipped"] <= 1 for r in rows)
    assert rows[0]["is_weight/max"] == pytest.approx(1.0, abs=1e-4)  # on-policy: trainer = engine
    assert rows[2]["is_weight/max"] > 1.0 + 1e-3  # one update behind: pi_current / pi_behaviour moved
    versions = {(t.step, t.policy_version) for t in RunStore.open(straight / "trajectories")}
    # Step 1 by the initial weights; step 2 sampled during update 1, still by them; step 3 during update 2.
    assert versions == {(1, 0), (2, 0), (3, 1)}


def test_staleness_needs_importance_sampling(plugin, tmp_path):
    cfg = tiny_config(tmp_path, 1, *PIPELINED, "loss.is_level=none")
    with pytest.raises(ConfigError, match="loss.is_level: token"):
        GRPORecipe(cfg, progress=False).setup()


def test_crash_after_step_2_resumes_with_the_stored_prefetched_rollout(straight, tmp_path):
    cfg = tiny_config(tmp_path, STEPS, *PIPELINED)
    recipe = GRPORecipe(cfg, progress=False)
    recipe.setup()
    save = recipe.save

    def crash_at_step_3():
        if recipe.step == 3:
            raise RuntimeError("killed")
        save()

    recipe.save = crash_at_step_3
    with pytest.raises(RuntimeError, match="killed"):
        recipe.train()
    recipe.cleanup()
    assert latest_checkpoint(tmp_path).name == "step_000002"
    assert (pending_dir(tmp_path, 3) / "batch.json").exists()  # step 3's rollout, sampled by version 1

    resumed = GRPORecipe(cfg, progress=False)
    resumed.setup()
    assert resumed.step == 2 and resumed.prefetched is not None
    assert {t.policy_version for t in resumed.prefetched.sampled} == {1}
    resumed.train()
    resumed.cleanup()
    assert_same_run(tmp_path, straight)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_with_the_cli(straight, plugin, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "paused"
    command = [*agent_grpo_train(), "--no-progress", *(f"--set={o}" for o in tiny_overrides(out, STEPS, *PIPELINED))]
    # Step 3's rollout blocks; with pipelining it runs during step 2's update, so the kill lands mid-update.
    env = subprocess_env(plugin, **{PAUSE_AT_STEP: "2", PAUSE_MARKER: str(marker)})
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate(timeout=5)[0].decode()[-3000:]
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert latest_checkpoint(out).name == "step_000001"  # step 2 waits for step 3's rollout before its checkpoint
    assert (pending_dir(out, 2) / "batch.json").exists()

    done = subprocess.run(command, env=subprocess_env(plugin), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resumed from" in done.stdout and "reused" in done.stdout
    assert_same_run(out, straight)
