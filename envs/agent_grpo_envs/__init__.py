"""The built-in environments of agent-grpo, an ordinary environment plugin package.

Registered only through the `agent_grpo.envs` entry points in `envs/pyproject.toml`:
`visual-search` (the embedded default), `vstar` (V*-Bench format), `grounding` (referring
expressions), `refcoco` (RefCOCO/+/g in VLM-R1's format) and `deepeyes` (DeepEyes' training parquet).
"""

from agent_grpo_envs._common import DatasetError, GeneratedTasks, task_seed
from agent_grpo_envs.deepeyes import DeepEyesEnv
from agent_grpo_envs.grounding import GroundingConfig, GroundingEnv
from agent_grpo_envs.refcoco import RefCocoEnv
from agent_grpo_envs.visual_search import VisualSearchConfig, VisualSearchEnv, play_scripted, scripted_turns
from agent_grpo_envs.vstar import VStarEnv

__all__ = [
    "DatasetError", "DeepEyesEnv", "GeneratedTasks", "GroundingConfig", "GroundingEnv", "RefCocoEnv", "VStarEnv", "VisualSearchConfig",
    "VisualSearchEnv", "play_scripted", "scripted_turns", "task_seed",
]
