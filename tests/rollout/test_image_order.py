"""Images follow their placeholders: an environment may show its images in any order, and the batch checks
image tokens per image, in placeholder order."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from zoom_fixtures import ZoomEnv

from agent_grpo.content import ImagePart, Message, TextPart
from agent_grpo.errors import BatchError
from agent_grpo.rollout import RolloutConfig, RolloutDriver, SamplingParams, ScriptedEngine, assemble_batch
from agent_grpo.tools import load_tools
from agent_grpo.trajectory import Task


class TwoImagesReversed(ZoomEnv):
    """Two task images of different shapes; the prompt shows the second one first."""

    def load_tasks(self, split="train", n=None, seed=0):
        rng = np.random.default_rng(seed)
        square = Image.fromarray(rng.integers(0, 255, size=(448, 448, 3), dtype=np.uint8))
        wide = Image.fromarray(rng.integers(0, 255, size=(224, 448, 3), dtype=np.uint8))
        return [Task(id="t0", question="Which digit?", answer="3",
                     images=[ImagePart.from_pil(square), ImagePart.from_pil(wide)])]

    def prompt(self, task, images):
        content = []
        for img in reversed(images):
            content += [TextPart(text=f"Image {img.observation}: "), img, TextPart(text="\n")]
        return [Message.text("system", self.system_prompt), Message(role="user", content=[*content, TextPart(text="?")])]


@pytest.fixture
def reversed_env():
    env = TwoImagesReversed(tools=load_tools().subset(["zoom_in"]))
    yield env
    env.shutdown()


def _rollout(env, chat):
    seen = []

    def script(request):
        seen.append([img.size for img in request.images])
        return "<think>x</think><answer>3</answer>"

    config = RolloutConfig(group_size=1, sampling=SamplingParams(max_new_tokens=32))
    [traj] = RolloutDriver(env, ScriptedEngine(script, chat), chat, config).rollout(env.load_tasks())
    return traj, seen


def test_engine_views_and_batch_images_follow_the_placeholders(tiny, reversed_env):
    chat = tiny[2]
    traj, seen = _rollout(reversed_env, chat)
    budget = reversed_env.budget
    views = [budget.view(img.pil, img.source) for img in traj.images]  # observation order: square, wide
    tokens = [chat.num_image_tokens(*v.size) for v in views]
    assert tokens[0] != tokens[1]  # the two images need different numbers of image tokens
    assert seen == [[views[1].size, views[0].size]]  # the engine got them as the prompt shows them
    batch = assemble_batch([traj], chat, budget)
    grids = [int(g.prod()) // chat.merge_size**2 for g in batch.image_grid_thw]
    assert grids == [tokens[1], tokens[0]]  # features in placeholder order


def test_images_listed_in_the_other_order_raise_with_the_trajectory_id(tiny, reversed_env):
    chat = tiny[2]
    traj, _ = _rollout(reversed_env, chat)
    user = traj.messages[1]
    parts = [i for i, p in enumerate(user.content) if isinstance(p, ImagePart)]
    a, b = parts
    user.content[a], user.content[b] = user.content[b], user.content[a]  # the messages now disagree with the tokens
    with pytest.raises(BatchError, match=f"trajectory {traj.id}: .*image-token runs"):
        assemble_batch([traj], chat, reversed_env.budget)


def test_a_message_image_that_is_not_one_of_the_trajectory_s_raises(tiny, reversed_env):
    chat = tiny[2]
    traj, _ = _rollout(reversed_env, chat)
    traj.images = traj.images[:1]
    with pytest.raises(BatchError, match=f"trajectory {traj.id}: a message shows image 1"):
        assemble_batch([traj], chat, reversed_env.budget)
