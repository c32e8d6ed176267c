"""The agent-grpo-envs package: entry points, shared helpers."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

from agent_grpo_envs._common import compose_panel, read_jsonl
from PIL import Image

from agent_grpo.budget import VisualBudget
from agent_grpo.envs import Environment

PYPROJECT = Path(__file__).parents[2] / "envs" / "pyproject.toml"


def test_entry_points_name_the_environment_classes():
    eps = tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"]["agent_grpo.envs"]
    assert sorted(eps) == ["deepeyes", "grounding", "hrbench", "refcoco", "visual-search", "vstar"]
    for name, value in eps.items():
        module, attr = value.split(":")
        cls = getattr(importlib.import_module(module), attr)
        assert issubclass(cls, Environment) and cls.name == name and cls.description
        assert cls.tool_names == (() if name == "refcoco" else ("zoom_in",))  # refcoco: VLM-R1's single turn


def test_default_budgets():
    from agent_grpo_envs import GroundingEnv, VisualSearchEnv, VStarEnv

    # visual-search: the full view and every zoom are shown at 112 x 112 px (4 x 4 visual tokens each).
    assert VisualSearchEnv(allow_tools=False).budget == VisualBudget(
        max_turns=3, max_images=3, max_pixels_per_image=112 * 112, max_pixels_per_task_image=112 * 112
    )
    assert VStarEnv(allow_tools=False).budget.max_pixels_per_image == 1024 * 28 * 28
    assert GroundingEnv(allow_tools=False).budget.max_pixels_per_image == 448 * 448


def test_panel_and_jsonl_helpers(tmp_path):
    panel = compose_panel([("big", Image.new("RGB", (896, 896))), ("small", Image.new("RGB", (112, 56)))], height=100)
    assert panel.size == (8 + 100 + 8 + 200 + 8, 100 + 16 + 16)
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": 2}\n')
    assert read_jsonl(path, ("a",)) == [(1, {"a": 1}), (4, {"a": 2})]
