"""Steps count from 1 everywhere a user sees them: progress lines, metrics.jsonl, checkpoints and stored
trajectories; a run begun when trajectories were stored 0-based keeps that numbering when resumed."""

from __future__ import annotations

import pytest
import torch
from trainer_fixtures import register_env_plugin, run_recipe, tiny_config

from agent_grpo.recipes.grpo import GRPORecipe
from agent_grpo.store import RunMeta, RunStore
from agent_grpo.train.metrics import read_metrics

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    root = register_env_plugin(tmp_path_factory.mktemp("plugin"))
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        yield root


@pytest.mark.slow
def test_trajectories_metrics_and_checkpoints_share_1_based_steps(plugin, tmp_path):
    recipe = run_recipe(tiny_config(tmp_path, 2))
    store = RunStore.open(tmp_path / "trajectories")
    assert sorted({r.step for r in store.rows}) == [1, 2]
    assert all(r.id.startswith(f"s{r.step}-") for r in store.rows)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if "reward" in r] == [1, 2]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir())[-1] == "step_000002"
    assert store.meta.extra["first_step"] == 1 and recipe.first_step == 1


def test_a_run_begun_0_based_keeps_its_numbering(plugin, tmp_path):
    RunStore.create(tmp_path / "trajectories", meta=RunMeta(env="text-reward-test")).close()  # no first_step
    recipe = GRPORecipe(tiny_config(tmp_path, 1), progress=False)
    recipe.setup()
    try:
        assert recipe.first_step == 0
        _, kept, _ = recipe.rollout_step(1)
        assert {t.step for t in kept} == {0} and all(t.id.startswith("s0-") for t in kept)
    finally:
        recipe.cleanup()
