"""`refcoco`: RefCOCO / RefCOCO+ / RefCOCOg referring expressions in VLM-R1's format (see `env.RefCocoEnv`)."""

from agent_grpo_envs.refcoco.env import SAMPLES, RefCocoConfig, RefCocoEnv

__all__ = ["SAMPLES", "RefCocoConfig", "RefCocoEnv"]
