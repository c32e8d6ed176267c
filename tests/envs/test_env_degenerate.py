"""Degenerate images and boxes end as tool-error observations or data errors at load time, never mid-run."""

from __future__ import annotations

import json

import pytest
from agent_grpo_tools import crop, zoom_in
from hostile_tools import empty_image, numpy_image, sliver_image
from PIL import Image
from pydantic import ValidationError

from agent_grpo.budget import VisualBudget
from agent_grpo.content import ImagePart
from agent_grpo.envs import Environment
from agent_grpo.rewards import format_reward
from agent_grpo.rewards.rubric import Rubric
from agent_grpo.tools import ToolRegistry
from agent_grpo.trajectory import Task, ToolErrorKind


class _Env(Environment):
    name = "degenerate-test"
    tool_names = ("zoom_in", "crop", "numpy_image", "empty_image", "sliver_image")

    def load_tasks(self, split="train", n=None, seed=0):
        return []

    def default_budget(self):
        return VisualBudget(max_turns=8, max_images=8, max_visual_tokens=100_000)

    def default_rubric(self):
        return Rubric([format_reward])


@pytest.fixture(scope="module")
def env():
    e = _Env(tools=ToolRegistry([zoom_in, crop, numpy_image, empty_image, sliver_image]))
    yield e
    e.shutdown()


def _turn(name: str, arguments: dict) -> str:
    return f"<think>t</think><tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def _task(width: int, height: int) -> Task:
    return Task(id="t", question="q", answer="1", images=[ImagePart.from_pil(Image.new("RGB", (width, height)))])


@pytest.mark.parametrize(
    "image, name, arguments, kind, message",
    [
        ((1000, 1000), "crop", {"bbox_2d": [0, 500, 1000, 501]}, ToolErrorKind.BAD_BOX, "too thin to show"),
        # 60000 x 300 is just showable; capped to the storage limit its zoom's sides round past ratio 200.
        ((60_000, 300), "zoom_in", {"bbox_2d": [0, 0, 60_000, 300]}, ToolErrorKind.EXCEPTION, "aspect ratio over 200"),
        ((64, 64), "numpy_image", {}, ToolErrorKind.EXCEPTION, "expected a PIL image"),
        ((64, 64), "empty_image", {}, ToolErrorKind.EXCEPTION, "got 0x0"),
        ((64, 64), "sliver_image", {}, ToolErrorKind.EXCEPTION, "got 500x1"),
    ],
)
def test_degenerate_results_are_tool_error_observations(env, image, name, arguments, kind, message):
    episode = env.start(_task(*image))
    [observation] = env.step(episode, _turn(name, arguments))  # before: raised out of step
    [result] = episode.trajectory.turns[-1].results
    assert result.error_kind == kind and message in result.error, result.error
    assert observation.role == "tool" and message in observation.text_content
    assert len(episode.images) == 1  # nothing admitted


def test_a_task_image_the_model_cannot_take_fails_when_the_data_is_loaded():
    with pytest.raises(ValidationError, match=r"task 'thin-1': image 0 cannot be used: aspect ratio over 200"):
        Task(id="thin-1", question="q", images=[ImagePart.from_pil(Image.new("RGB", (201 * 28, 28)))])
    Task(id="ok", question="q", images=[ImagePart.from_pil(Image.new("RGB", (200 * 28, 28)))])
