"""Fixtures for rollout tests: the tiny model and a small zoom environment."""

from __future__ import annotations

import pytest
import torch
from zoom_fixtures import ZoomEnv

from agent_grpo.models.chat import ChatFormat
from agent_grpo.models.tiny import build_tiny_model
from agent_grpo.tools import load_tools

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny():
    model, processor = build_tiny_model(size="S", seed=0)
    model.eval()
    return model, processor, ChatFormat(processor)


@pytest.fixture
def zoom_env():
    env = ZoomEnv(tools=load_tools().subset(["zoom_in"]))
    yield env
    env.shutdown()
