"""`visual-search`: the embedded default environment (see `env.VisualSearchEnv`)."""

from pathlib import Path

from agent_grpo_envs.visual_search.env import QUESTION, VisualSearchEnv
from agent_grpo_envs.visual_search.generator import Scene, VisualSearchConfig, generate
from agent_grpo_envs.visual_search.policy import play, play_scripted, scripted_turns

# Demo pipelines (entry-point group agent_grpo.demos, see pyproject.toml).
DEMO_FIND = Path(__file__).parent / "demo_find.yaml"  # the question names no cell: find the square, then zoom
DEMO_BOXED = Path(__file__).parent / "demo.yaml"  # the question gives the cell's box: copy it and zoom

__all__ = ["DEMO_BOXED", "DEMO_FIND", "QUESTION", "Scene", "VisualSearchConfig", "VisualSearchEnv", "generate", "play", "play_scripted", "scripted_turns"]
