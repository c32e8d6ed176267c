"""examples/qwen3vl-rec: the recipe file itself, run for one step on a tiny Qwen3-VL on the CPU (issue 14).

The smoke test is the file's own `smoke` preset (`--set preset=smoke`) on the shipped refcoco sample rows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import Qwen3VLForConditionalGeneration

from agent_grpo.models.chat import Qwen3VLImageTextProcessor, tools_chat_template
from agent_grpo.models.loading import load_processor
from agent_grpo.store import RunStore
from agent_grpo.train.config import load_config
from agent_grpo.train.metrics import read_metrics

torch.set_num_threads(1)

RECIPE = Path(__file__).resolve().parents[2] / "examples" / "qwen3vl-rec" / "config.yaml"


def load_recipe(tmp_path: Path, preset: str | None = None, extra: list[str] = ()):
    """The recipe as `agent-grpo train RECIPE [--set preset=NAME] --set EXTRA...` reads it."""
    return load_config(RECIPE, [*([f"preset={preset}"] if preset else []), *extra])


def test_the_recipe_says_how_to_run_it_and_names_qwen3_vl(tmp_path):
    text = RECIPE.read_text()
    assert text.startswith("# accelerate launch") and "train examples/qwen3vl-rec/config.yaml" in text.splitlines()[0]
    assert "agent-grpo train examples/qwen3vl-rec/config.yaml --set preset=smoke" in text
    readme = (RECIPE.parent / "README.md").read_text()
    assert "estimate" in readme.lower() and "per step" in readme and "--set preset=smoke" in readme
    cfg = load_recipe(tmp_path)
    assert cfg.model.family == "qwen3_vl" and cfg.model.path == "Qwen/Qwen3-VL-8B-Instruct"
    assert (cfg.loss.beta, cfg.rollout.group_size, cfg.optim.lr, cfg.env.name) == (0.04, 8, 1e-6, "refcoco")
    smoke = load_recipe(tmp_path, "smoke")
    assert smoke.model.path == "tiny" and smoke.model.family == "qwen3_vl" and smoke.rollout.engine == "hf"
    assert smoke.env.name == cfg.env.name and smoke.loss == cfg.loss  # the same task, reward and objective


@pytest.mark.slow
def test_the_recipe_trains_one_step_on_a_tiny_qwen3_vl(tmp_path):
    from agent_grpo.recipes.grpo import GRPORecipe

    out = tmp_path / "run"
    cfg = load_recipe(tmp_path, "smoke", [f"out_dir={out}"])
    recipe = GRPORecipe(cfg, progress=False)
    recipe.setup()
    try:
        assert type(recipe.policy) is Qwen3VLForConditionalGeneration
        assert recipe.env.budget.token_side == 32  # the budget counts Qwen3-VL's 32 px visual tokens
        assert recipe.env.name == "refcoco"
        recipe.train()
    finally:
        recipe.cleanup()
    [row] = [r for r in read_metrics(out / "metrics.jsonl") if "reward" in r]
    assert row["step"] == 1 and torch.isfinite(torch.tensor(row["loss"]))
    [ckpt] = sorted((out / "checkpoints").iterdir())
    assert Qwen3VLForConditionalGeneration.from_pretrained(ckpt / "model").config.model_type == "qwen3_vl"
    processor = load_processor(ckpt / "model")
    assert isinstance(processor, Qwen3VLImageTextProcessor) and processor.image_processor.patch_size == 16
    assert processor.chat_template == tools_chat_template("qwen3_vl")
    assert len(RunStore.open(out / "trajectories")) == 2 * 2
