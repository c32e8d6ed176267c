"""`deepeyes`: DeepEyes' training parquet, thinking with images through zoom-in (see `env.DeepEyesEnv`).

`parquet_rows.ParquetRows` (the lazy reader) is imported on first use: pyarrow costs ~0.3 s to import, and
every environment module is imported whenever the installed environments are listed."""

from agent_grpo_envs.deepeyes.env import SAMPLES, DeepEyesEnv

__all__ = ["SAMPLES", "DeepEyesEnv"]
