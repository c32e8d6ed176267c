"""`rollout.vllm` pass-throughs: sleep mode (level, GPU only) and per-process engines. No engine is started."""

from __future__ import annotations

import pytest
import torch

from agent_grpo.errors import ConfigError
from agent_grpo.rollout.vllm_engine import VLLMEngine, request_seed
from agent_grpo.train.config import load_config


def test_sleep_level_is_validated_and_needs_sleep_mode():
    cfg = load_config(None, ["rollout.engine=vllm", "rollout.vllm.sleep_during_update=true", "rollout.vllm.sleep_level=2"])
    assert cfg.rollout.vllm.sleep_level == 2
    with pytest.raises(ConfigError, match=r"sleep_level=2 only applies with rollout.vllm.sleep_during_update: true"):
        load_config(None, ["rollout.engine=vllm", "rollout.vllm.sleep_level=2"])
    with pytest.raises(ConfigError, match="sleep_level"):
        load_config(None, ["rollout.engine=vllm", "rollout.vllm.sleep_during_update=true", "rollout.vllm.sleep_level=3"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_sleep_mode_is_refused_without_cuda_before_vllm_is_touched():
    with pytest.raises(ConfigError, match="sleep mode .* needs a CUDA device"):
        VLLMEngine(None, None, None, max_images=1, max_model_len=64, enable_sleep_mode=True)


def test_request_seeds_depend_on_the_trajectory_not_the_process():
    """One engine per DDP process: each samples its own trajectories, with seeds from their ids only, so a
    trajectory's sample is the same whichever process (or how many) generates it, and trajectories differ."""
    keys = [f"s1-g{g}-{i}" for g in range(4) for i in range(4)]  # what ranks 0 and 1 would split
    seeds = [request_seed(7, k, 0) for k in keys]
    assert len(set(seeds)) == len(keys)
    assert seeds == [request_seed(7, k, 0) for k in keys]  # no hidden state (rank, call order)
    assert request_seed(7, keys[0], 1) != seeds[0] and request_seed(8, keys[0], 0) != seeds[0]
    assert all(0 <= s < 2**63 for s in seeds)
