"""`hrbench`: HR-Bench 4K / 8K from its TSV, or the shipped samples (see `env.HRBenchEnv`)."""

from agent_grpo_envs.hrbench.env import SAMPLE_FILES, SAMPLES, HRBenchEnv, build_prompt
from agent_grpo_envs.hrbench.tsv import TsvRows

__all__ = ["SAMPLES", "SAMPLE_FILES", "HRBenchEnv", "TsvRows", "build_prompt"]
