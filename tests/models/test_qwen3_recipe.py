"""examples/qwen3vl-rec: the recipe file itself, run for one step on a tiny Qwen3-VL on the CPU (issue 14)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import Qwen3VLForConditionalGeneration

from agent_grpo.envs.registry import load_envs
from agent_grpo.models.chat import Qwen3VLImageTextProcessor, tools_chat_template
from agent_grpo.models.loading import load_processor
from agent_grpo.store import RunStore
from agent_grpo.train.config import load_config
from agent_grpo.train.metrics import read_metrics

torch.set_num_threads(1)

RECIPE = Path(__file__).resolve().parents[2] / "examples" / "qwen3vl-rec" / "config.yaml"
# The README's smoke overrides: the same file on the tiny model (model.family: qwen3_vl stays), HF engine, one step.
SMOKE = [
    "steps=1", "save_every=1", "eval_every=0", "tensorboard=false",
    "model.path=tiny", "model.dtype=float32", "model.gradient_checkpointing=false",
    "env.num_eval_tasks=2", "rollout.engine=hf", "rollout.tasks_per_step=2", "rollout.group_size=2",
    "rollout.max_total_tokens=1024", "rollout.sampling.max_new_tokens=24",
]


def smoke_env_overrides() -> list[str]:
    """The refcoco environment's shipped sample rows; where it is not installed, the `grounding` environment."""
    if "refcoco" in load_envs():
        return ["env.options={}"]  # the environment's defaults: its shipped sample rows
    return ["env.options={}", "env.name=grounding"]


def test_the_recipe_says_how_to_run_it_and_names_qwen3_vl():
    text = RECIPE.read_text()
    assert text.startswith("# accelerate launch") and "train examples/qwen3vl-rec/config.yaml" in text.splitlines()[0]
    cfg = load_config(RECIPE)
    assert cfg.model.family == "qwen3_vl" and cfg.model.path == "Qwen/Qwen3-VL-8B-Instruct"
    assert (cfg.loss.beta, cfg.rollout.group_size, cfg.optim.lr) == (0.04, 8, 1e-6)  # VLM-R1's REC settings


@pytest.mark.slow
def test_the_recipe_trains_one_step_on_a_tiny_qwen3_vl(tmp_path):
    from agent_grpo.recipes.grpo import GRPORecipe

    out = tmp_path / "run"
    cfg = load_config(RECIPE, [*SMOKE, *smoke_env_overrides(), f"out_dir={out}"])
    recipe = GRPORecipe(cfg, progress=False)
    recipe.setup()
    try:
        assert type(recipe.policy) is Qwen3VLForConditionalGeneration
        assert recipe.env.budget.token_side == 32  # the budget counts Qwen3-VL's 32 px visual tokens
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
    store = RunStore.open(out / "trajectories")
    assert len(store) == 2 * 2
