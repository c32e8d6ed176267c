"""Helpers for trainer tests (a uniquely named module: `conftest` names collide across test folders).

- `TextRewardEnv`: one image, one turn, a reward that varies with the sampled text, so the random
  tiny model gets non-zero advantages. Registered as the `text-reward-test` environment through a
  throw-away distribution (`register_env_plugin`), so `agent-grpo train` finds it, in-process or in
  a subprocess, by the same entry-point path as installed environments.
- `tiny_config`, `params_of`: a fast training config and a parameter snapshot.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from agent_grpo.budget import VisualBudget
from agent_grpo.content import ImagePart
from agent_grpo.envs import Environment
from agent_grpo.rewards.rubric import Rubric, reward
from agent_grpo.train.config import load_config
from agent_grpo.trajectory import Task, Trajectory

HERE = Path(__file__).resolve().parent
ENV_NAME = "text-reward-test"
PAUSE_AT_STEP = "TRAINER_TEST_PAUSE_AT_STEP"  # env var: the step (0-based) whose rollout blocks
PAUSE_MARKER = "TRAINER_TEST_PAUSE_MARKER"  # env var: file written when it blocks


# ---- an environment whose reward varies with what the random model samples ----------------------


@reward("letters")
def letter_share(traj: Trajectory) -> float:
    """Share of the sampled characters that are ASCII letters: differs between random samples."""
    text = "".join(t.text for t in traj.turns)
    return sum(c.isascii() and c.isalpha() for c in text) / max(1, len(text))


class TextRewardEnv(Environment):
    """One small image, one turn; reward = share of letters in the reply. For trainer tests only.

    With `TRAINER_TEST_PAUSE_AT_STEP=k` in the environment, the rollout of step k (0-based) writes
    the file named by `TRAINER_TEST_PAUSE_MARKER` and sleeps, so a test can kill the run mid-step.
    """

    name = ENV_NAME
    tool_names = ()

    def load_tasks(self, split="train", n=None, seed=0):
        rng = np.random.default_rng((seed, split == "train"))
        return [
            Task(id=f"{split}-{i}", question="Describe the image.", answer="x", split=split,
                 images=[ImagePart.from_pil(Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)))])
            for i in range(n or 8)
        ]

    def default_budget(self):
        return VisualBudget(max_turns=1, max_images=1, max_pixels_per_image=56 * 56)

    def default_rubric(self):
        return Rubric([letter_share])

    def on_start(self, episode):
        pause = os.environ.get(PAUSE_AT_STEP)
        # Trajectory ids carry the 1-based step (s1- is the first step's); the variable stays 0-based.
        if pause is not None and episode.trajectory.group_id.startswith(f"s{int(pause) + 1}-"):
            Path(os.environ[PAUSE_MARKER]).write_text(episode.trajectory.group_id)
            time.sleep(300)  # killed long before this returns


def register_env_plugin(root: Path) -> Path:
    """A throw-away distribution declaring `text-reward-test`; put `root` and this folder on the path."""
    dist = root / "agent_grpo_trainer_test-0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: agent-grpo-trainer-test\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(f"[agent_grpo.envs]\n{ENV_NAME} = trainer_fixtures:TextRewardEnv\n")
    return root


def subprocess_env(plugin_root: Path, **extra: str) -> dict[str, str]:
    """Environment variables for a child `agent-grpo` that finds the test plugin, on one CPU thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(plugin_root), str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


TINY_OVERRIDES = [
    f"env.name={ENV_NAME}", "env.num_eval_tasks=2", "rollout.tasks_per_step=2", "rollout.group_size=3",
    "rollout.max_total_tokens=256", "rollout.sampling.max_new_tokens=12", "loss.mask_truncated=false",
    "optim.lr=0.001", "optim.warmup_steps=1", "optim.schedule=cosine", "tensorboard=false", "save_every=1",
]


def tiny_overrides(out_dir: Path, steps: int, *more: str) -> list[str]:
    return [f"out_dir={out_dir}", f"steps={steps}", *TINY_OVERRIDES, *more]


def tiny_config(out_dir: Path, steps: int, *more: str):
    return load_config(None, tiny_overrides(out_dir, steps, *more))


def run_recipe(cfg):
    """A GRPO recipe set up, trained to the end and cleaned up (also when training raises)."""
    from agent_grpo.recipes.grpo import GRPORecipe

    recipe = GRPORecipe(cfg, progress=False)
    recipe.setup()
    try:
        recipe.train()
    finally:
        recipe.cleanup()
    return recipe


def params_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def params_checksum(model) -> str:
    """sha256 over every parameter's bytes, in name order: equal checksums mean bit-identical weights."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


if __name__ == "__main__":
    # `accelerate launch ... trainer_fixtures.py train ARGS`: the real `agent-grpo` CLI, where each
    # process also writes a checksum of its final weights to OUT/params.rank<i>.txt before cleanup.
    from agent_grpo.cli.main import app
    from agent_grpo.recipes.grpo import GRPORecipe

    cleanup = GRPORecipe.cleanup

    def cleanup_with_checksum(self):
        (self.cfg.out_dir / f"params.rank{self.rank}.txt").write_text(params_checksum(self.policy))
        cleanup(self)

    GRPORecipe.cleanup = cleanup_with_checksum
    app()
