"""visual-search's find variant (`names_cell: false`): the question names nothing, one red square to find."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from agent_grpo_envs import VisualSearchConfig, VisualSearchEnv
from agent_grpo_envs.visual_search import generate, play_scripted
from agent_grpo_envs.visual_search import pretrain as P
from agent_grpo_envs.visual_search.env import FIND_QUESTION

FIND = P.FIND_SCENES


@pytest.fixture(scope="module")
def env(zoom_tools):
    e = VisualSearchEnv(config=FIND, tools=zoom_tools)
    yield e
    e.shutdown()


def test_the_question_gives_no_cell_and_one_red_square_is_the_only_red(env):
    cells = set()
    for index in range(30):
        task = env.make_task("test", index)
        assert task.question == FIND_QUESTION
        assert not any(ch.isdigit() for ch in task.question)  # no row, column or box
        scene = generate(task.metadata["seed"], env.config)
        assert scene.other_squares == () and task.metadata["other_squares"] == []
        a = np.asarray(scene.image).astype(int)
        ys, xs = np.nonzero((a[..., 0] > 150) & (a[..., 1] < 90) & (a[..., 2] < 90))
        assert set((ys // 224 * 4 + xs // 224 + 1).tolist()) == {scene.cell}  # the red is the target's cell only
        cells.add(scene.cell)
    assert len(cells) >= 12  # the target moves over the grid: nothing to copy, nothing to memorise


def test_find_view_is_the_configured_full_view_and_zooms_stay_at_112(env):
    assert env.budget.max_pixels("task") == FIND["full_view"] ** 2
    assert env.budget.max_pixels("tool") == 112 * 112
    task = env.make_task("test", 0)
    assert env.budget.view(task.images[0].pil, "task").size == (FIND["full_view"],) * 2


def test_names_cell_false_needs_one_red_square():
    with pytest.raises(ValueError, match="names_cell false needs red_squares 1"):
        VisualSearchConfig(names_cell=False)  # the default 3 squares: "the red square" would be ambiguous
    assert VisualSearchConfig(names_cell=False, red_squares=1).red_squares == 1


def test_same_seed_same_scene_apart_from_the_squares_count():
    """The find variant draws its canvases from the same seeds: deterministic, splits disjoint."""
    env = VisualSearchEnv(config=FIND)
    a = [t.images[0].sha256 for t in env.load_tasks("train", 10)]
    assert a == [t.images[0].sha256 for t in env.load_tasks("train", 10)]
    assert not set(a) & {t.images[0].sha256 for t in env.load_tasks("test", 10)}


def test_ideal_scripted_policy_finds_and_reads(env):
    """The demonstrator knows where the square is (as a person finds it): a tight zoom on its cell."""
    trajs = [play_scripted(env, env.make_task("train", i), quality=1.0, rng=np.random.default_rng(i)) for i in range(4)]
    env.score_group(trajs)
    for t in trajs:
        assert t.num_tool_calls == 1 and t.metrics["zoom_cell_iou"] == pytest.approx(1.0)
        assert t.metrics["needless_zooms"] == 0 and t.rewards["accuracy"] == 1.0


def test_locate_sample_is_the_whole_canvas_at_the_full_view_with_the_cell_box():
    config = VisualSearchConfig(**FIND)
    for seed in range(5):
        sample = P.make_sample(123 + seed, "locate", config)
        scene = generate(123 + seed, config)
        assert sample.source == "task" and sample.image.size == (896, 896)
        assert sample.target == P.box_text(scene.cell_box) and sample.prompt == P.LOCATE_PROMPT
        assert "<tool_call>" not in sample.target and "zoom" not in sample.prompt  # never the tool protocol


def test_init_must_be_a_stage_one_checkpoint_of_the_same_seed(tmp_path):
    """Stage 2 from a checkpoint equals the two-stage command only if that checkpoint is its stage 1."""
    import shutil

    stage1 = Path(P.__file__).parent / "perception"  # made with the stage-1 command, seed 0
    with pytest.raises(ValueError, match="not a stage-1 checkpoint of seed 1"):
        P.pretrain(tmp_path / "x", steps=1, locate_steps=1, seed=1, init=stage1, progress=False, final_eval=1)
    both = tmp_path / "both"
    shutil.copytree(stage1, both)
    report = json.loads((both / "pretrain_report.json").read_text())
    (both / "pretrain_report.json").write_text(json.dumps({**report, "locate_steps": 5}))
    with pytest.raises(ValueError, match="not a stage-1 checkpoint"):
        P.pretrain(tmp_path / "y", steps=1, locate_steps=1, init=both, progress=False, final_eval=1)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()  # refused before anything is written


def test_the_held_out_scenes_are_pinned_to_the_pixel():
    """BENCHMARKS.md's numbers were measured on exactly these pixels. A change to the generator (or a Pillow that
    draws differently) that moves one pixel fails here: the recorded results would no longer be comparable."""
    pinned = {
        "boxed": (VisualSearchConfig(), ["63f7fe3bdc2a15d1", "36595b94dc58f501", "280445b470c3484d"]),
        "find": (VisualSearchConfig(**P.FIND_SCENES), ["95c2f18cecf7bee5", "12d65304745d8bc4", "540dbeece62957fe"]),
    }
    for name, (config, digests) in pinned.items():
        env = VisualSearchEnv(config=config)
        try:
            assert [t.images[0].sha256[:16] for t in env.load_tasks("test", 3)] == digests, name
        finally:
            env.shutdown()
