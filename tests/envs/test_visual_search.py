"""visual-search: determinism, geometry, the full lifecycle with the scripted policy, and the zoom premise."""

from __future__ import annotations

import json

import numpy as np
import pytest
from agent_grpo_envs import GeneratedTasks, VisualSearchConfig, VisualSearchEnv, task_seed
from agent_grpo_envs.visual_search import generate, play, play_scripted, scripted_turns
from env_fixtures import answer, zoom

from agent_grpo.boxes import Box
from agent_grpo.budget import VisualBudget
from agent_grpo.envs import BUDGET_NOTICE, LAST_TURN_NOTICE
from agent_grpo.trajectory import Termination


@pytest.fixture(scope="module")
def env(zoom_tools):
    e = VisualSearchEnv(tools=zoom_tools)
    yield e
    e.shutdown()


# ---- tasks -----------------------------------------------------------------------------------


def test_same_seed_same_pixels_and_splits_disjoint(env):
    a = [t.images[0].sha256 for t in env.load_tasks("train", 40)]
    b = [t.images[0].sha256 for t in env.load_tasks("train", 40)]
    test = [t.images[0].sha256 for t in env.load_tasks("test", 40)]
    other_seed = [t.images[0].sha256 for t in env.load_tasks("train", 40, seed=1)]
    assert a == b
    assert len(set(a)) == 40  # no two tasks alike
    assert not set(a) & set(test)
    assert not set(a) & set(other_seed)
    train_seeds = {t.metadata["seed"] for t in env.load_tasks("train", 40)}
    test_seeds = {t.metadata["seed"] for t in env.load_tasks("test", 40)}
    assert not train_seeds & test_seeds


def test_task_seeds_never_collide_across_splits():
    seeds = {task_seed(split, i, s) for split in ("train", "test", "val") for i in range(300) for s in range(4)}
    assert len(seeds) == 3 * 300 * 4
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        task_seed("dev", 0)


def _centre(box: Box) -> tuple[float, float]:
    return (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2


def _inside(inner: Box, outer: Box, margin: float = 0) -> bool:
    return (outer.x1 + margin <= inner.x1 and inner.x2 <= outer.x2 - margin
            and outer.y1 + margin <= inner.y1 and inner.y2 <= outer.y2 - margin)


# The ink box of a digit turned by up to 10 degrees sits up to ~5.5 px from the point it is drawn around
# (a 7 is the worst: its ink is lopsided), so ink centres are checked with this much tolerance.
INK_TOLERANCE = 6


def test_geometry_of_many_tasks(env):
    cfg = env.config
    cell_px, offset = cfg.cell_size, cfg.target_offset
    assert (cell_px, offset, cfg.patch_side, cfg.glyph_height) == (224, 6, (104, 120), (60, 68))
    # the square is centred up to `offset`: its border is at least (224 - 120) / 2 - 6 = 46 px from the cell's
    margin = (cell_px - cfg.patch_side[1]) // 2 - offset
    assert margin == 46
    cells = set()
    for task in env.load_tasks("train", 150):
        m = task.metadata
        target, cell, glyph = (Box.from_list(m[k]) for k in ("target_box", "cell_box", "glyph_box"))
        row, col = divmod(m["target_cell"] - 1, 4)
        assert cell.as_list() == [col * cell_px, row * cell_px, (col + 1) * cell_px, (row + 1) * cell_px]
        assert 0 <= target.x1 and target.x2 <= 896 and 0 <= target.y1 and target.y2 <= 896
        assert 104 <= target.width == target.height <= 120
        # Centred in its cell: the centred corner (cell_px - side) // 2 moved by at most `offset` px, so the
        # square's centre is within `offset` px of the cell's (+ 0.5 px for an odd side, which has no
        # whole-pixel centred position).
        centred = (cell_px - int(target.width)) // 2
        assert abs(target.x1 - cell.x1 - centred) <= offset and abs(target.y1 - cell.y1 - centred) <= offset
        (tx, ty), (cx, cy) = _centre(target), _centre(cell)
        assert max(abs(tx - cx), abs(ty - cy)) <= offset + (target.width % 2) / 2
        assert _inside(target, cell, margin)  # wide margins on all sides
        # The digit: inside the square, drawn at most `offset` px from its centre, 60-68 px tall upright
        # (a 10 degree turn adds up to ~5 px; resampling the turned glyph can trim a pixel or two).
        assert _inside(glyph, target)
        gx, gy = _centre(glyph)
        assert max(abs(gx - tx), abs(gy - ty)) <= offset + INK_TOLERANCE
        assert 58 <= glyph.height <= 76
        assert task.answer in "0123456789" and len(task.answer) == 1
        assert m["target_cell"] not in m["decoy_cells"]
        json.dumps(m)  # metadata must be plain JSON
        cells.add(m["target_cell"])
    assert cells == set(range(1, 17))


@pytest.mark.parametrize("offset", [0, 100])
def test_target_offset_bounds_the_square_and_the_digit(offset):
    """target_offset=0: square and digit exactly centred; a huge one is capped by the cell's 8 px margins."""
    env = VisualSearchEnv(config={"target_offset": offset})
    spread = []
    for task in env.load_tasks("train", 60):
        m = task.metadata
        target, cell, glyph = (Box.from_list(m[k]) for k in ("target_box", "cell_box", "glyph_box"))
        (tx, ty), (cx, cy), (gx, gy) = _centre(target), _centre(cell), _centre(glyph)
        spread.append(max(abs(tx - cx), abs(ty - cy)))
        assert _inside(target, cell, 8) and _inside(glyph, target)
        if offset == 0:
            assert max(abs(gx - tx), abs(gy - ty)) <= INK_TOLERANCE
    if offset == 0:
        assert max(spread) <= 0.5  # half a pixel for odd sides
    else:
        assert max(spread) > 6  # really moves further than the default allows (up to 52 - 8 = 44 px)


def test_red_patches_are_the_squares_in_distinct_cells_and_the_question_names_the_target(env):
    for index in range(30):
        task = env.make_task("train", index)
        scene = generate(task.metadata["seed"])
        others = scene.other_squares
        assert len(others) == 2 and len({scene.cell, *(c for c, _ in others)}) == 3  # three distinct cells
        assert all(d != scene.digit for _, d in others)  # a zoom into the wrong cell answers wrong
        row, col = divmod(scene.cell - 1, 4)
        box = ", ".join(str(int(v)) for v in task.metadata["cell_box"])
        assert f"row {row + 1}, column {col + 1} (box [{box}])?" in task.question
        assert task.metadata["other_squares"] == [list(x) for x in others]
        # every strongly red pixel lies in a cell that holds a square, within 6.5 px of centring
        a = np.asarray(scene.image).astype(int)
        ys, xs = np.nonzero((a[..., 0] > 150) & (a[..., 1] < 90) & (a[..., 2] < 90))
        red_cells = set((ys // 224 * 4 + xs // 224 + 1).tolist())
        assert red_cells == {scene.cell, *(c for c, _ in others)}
        for cell in red_cells:
            r, c = divmod(cell - 1, 4)
            inside = (ys // 224 == r) & (xs // 224 == c)
            cx, cy = (xs[inside].min() + xs[inside].max() + 1) / 2, (ys[inside].min() + ys[inside].max() + 1) / 2
            assert abs(cx - (c * 224 + 112)) <= 6.5 and abs(cy - (r * 224 + 112)) <= 6.5


def test_lazy_task_list():
    tasks = GeneratedTasks(lambda i: i * 10, 5)  # any factory: the list only indexes
    assert len(tasks) == 5 and tasks[-1] == 40 and tasks[1:3] == [10, 20] and list(tasks) == [0, 10, 20, 30, 40]
    with pytest.raises(IndexError):
        tasks[5]


def test_config_is_checked():
    with pytest.raises(ValueError, match="does not fit a 224 px cell"):
        VisualSearchConfig(patch_side=(100, 220))
    with pytest.raises(ValueError, match="glyph_height up to 90 does not fit a 104 px patch"):
        VisualSearchConfig(glyph_height=(60, 90))  # 90 + 2 x 10 px padding > the smallest 104 px square
    assert VisualSearchConfig(glyph_height=(60, 84)).glyph_height == (60, 84)  # 84 + 20 = 104 still fits
    assert VisualSearchConfig(glyph_height=64).glyph_height == (64, 64)
    with pytest.raises(ValueError, match="target_offset"):
        VisualSearchConfig(target_offset=-1)
    small = VisualSearchEnv(config={"clutter": False, "train_size": 3})
    assert len(small.load_tasks("train")) == 3
    with pytest.raises(ValueError, match="unknown split"):
        small.load_tasks("validation")


# ---- lifecycle -------------------------------------------------------------------------------


def test_ideal_policy_scores_full_marks(env):
    weights = env.rubric.weights
    assert env.config.tool_bonus == 0.5
    assert weights == {"accuracy": 0.8, "format": 0.2, "tool_bonus": 0.5, "tool_efficiency": 1.0}
    tasks = env.load_tasks("test", 6)
    group = [play_scripted(env, t, quality=1.0) for t in tasks]
    env.score_group(group)
    for traj in group:
        assert traj.termination == Termination.ANSWERED
        # one zoom on the exact cell is the useful one: tool efficiency 0, nothing needless
        assert traj.rewards == {"accuracy": 1.0, "format": 1.0, "tool_bonus": 1.0, "tool_efficiency": 0.0}
        assert traj.reward == pytest.approx(sum(weights[k] * v for k, v in traj.rewards.items()))
        assert traj.reward == pytest.approx(0.8 * 1 + 0.2 * 1 + 0.5 * 1 + 1.0 * 0)
        assert traj.metrics["needless_zooms"] == 0.0
        assert traj.metrics["zoom_cell_iou"] == 1.0 and traj.metrics["zoom_target_coverage"] == 1.0
        # the square lies inside the cell, so the IoU is side^2 / 224^2: 0.22 (104 px) to 0.29 (120 px)
        target, cell = (Box.from_list(traj.task.metadata[k]) for k in ("target_box", "cell_box"))
        assert traj.metrics["zoom_precision"] == pytest.approx(target.area / cell.area)
        assert 0.2 < traj.metrics["zoom_precision"] < 0.3
        zoomed = traj.images[1]  # stored at full resolution (the 224 px cell), shown to the model at 112 px
        assert (zoomed.width, zoomed.height) == (224, 224) and zoomed.box.as_list() == traj.task.metadata["cell_box"]
        assert env.budget.view(zoomed.pil, "tool").size == (112, 112)
        assert traj.metrics["visual_tokens"] == 16 + 16  # 112 px full view + 112 px zoom: 4 x 4 tokens each


def test_noisy_policy_is_imperfect_but_reproducible(env):
    tasks = env.load_tasks("train", 60)
    texts = [scripted_turns(t, quality=0.3, rng=np.random.default_rng(i)) for i, t in enumerate(tasks)]
    again = [scripted_turns(t, quality=0.3, rng=np.random.default_rng(i)) for i, t in enumerate(tasks)]
    assert texts == again
    group = [play(env, t, turns) for t, turns in zip(tasks, texts, strict=True)]
    env.score_group(group)
    acc = np.mean([t.rewards["accuracy"] for t in group])
    assert acc < 0.98  # guesses (14% at quality 0.3) are mostly wrong; every zoom shows the target whole
    assert any(t.num_tool_calls == 0 for t in group)  # some guesses without looking
    assert any(t.metrics["zoom_cell_iou"] == 0.25 for t in group)  # coarse 2 x 2-cell zooms
    assert any(t.num_tool_calls == 2 for t in group)  # coarse, then the cell
    with pytest.raises(ValueError, match="quality"):
        scripted_turns(tasks[0], quality=1.5)


def test_termination_reasons(env):
    task = env.load_tasks("test", 1)[0]
    cell = task.metadata["cell_box"]

    no_action = play(env, task, ["I think it is a seven."])
    assert no_action.termination == Termination.NO_ACTION and not no_action.turns[0].format_ok

    max_turns = play(env, task, [zoom(cell), zoom(cell), zoom(cell)])
    assert max_turns.termination == Termination.MAX_TURNS
    assert max_turns.num_tool_calls == 3 and len(max_turns.images) == 3  # the third call never ran

    ep = env.start(task)
    env.step(ep, "<think>Too long", truncated=True)
    assert env.finish(ep).termination == Termination.TRUNCATED


def test_budget_notice_when_images_run_out(env):
    task = env.load_tasks("test", 1)[0]
    cell = task.metadata["cell_box"]
    ep = env.start(task)
    [first] = env.step(ep, zoom(cell))
    assert BUDGET_NOTICE not in first.text_content and first.images
    [second] = env.step(ep, zoom(cell))  # third image of three: the budget is now spent
    assert BUDGET_NOTICE in second.text_content and LAST_TURN_NOTICE not in second.text_content
    assert env.step(ep, answer(task.answer)) == []
    assert env.finish(ep).termination == Termination.ANSWERED

    roomy = VisualSearchEnv(budget=VisualBudget(max_turns=6, max_images=2, max_pixels_per_image=224 * 224))
    roomy.tools = env.tools
    traj = play(roomy, task, [zoom(cell), zoom(cell), answer("1")])
    assert traj.termination == Termination.BUDGET  # told to answer, called a tool again
    assert BUDGET_NOTICE in traj.turns[0].notices


def test_bad_zoom_is_an_observation(env):
    task = env.load_tasks("test", 1)[0]
    ep = env.start(task)
    [msg] = env.step(ep, zoom([500, 500, 400, 600]))
    assert "Error from zoom_in" in msg.text_content and not msg.images
    [msg] = env.step(ep, zoom([0, 0, 100, 100], name="image_zoom_in_tool"))  # the DeepEyes alias
    assert msg.images and msg.images[0].box.as_list() == [0, 0, 100, 100]


def test_render_sample(env):
    task = env.load_tasks("test", 1)[0]
    pictures = dict(env.render_sample(task))
    assert list(pictures) == ["canvas", "full_view", "zoomed_cell"]
    assert pictures["canvas"].size == (896, 896)
    assert pictures["full_view"].size == (112, 112) and pictures["zoomed_cell"].size == (112, 112)
    panel = env.render_task(task)  # three pictures scaled to 448 px, 8 px gaps, a 16 px title row
    assert panel.size == (3 * 448 + 4 * 8, 448 + 16 + 2 * 8)


# ---- the premise: the digit needs the zoom ---------------------------------------------------


def _loose_box(cell_box) -> tuple[int, int, int, int]:
    """The 2 x 2-cell block (448 px) that holds the target's cell, inside the 896 px canvas."""
    side = 2 * 224
    x1, y1 = min(int(cell_box[0]), 896 - side), min(int(cell_box[1]), 896 - side)
    return x1, y1, x1 + side, y1 + side


def _views(scene, budget: VisualBudget) -> dict[str, tuple[tuple[int, ...], np.ndarray]]:
    """The model's views of one canvas (the env's own budget): the full view, a zoom on the exact cell,
    and a loose zoom on the 2 x 2 cells around it; each with its box on the canvas."""
    boxes = {"full": (0, 0, 896, 896), "cell": tuple(scene.cell_box), "loose": _loose_box(scene.cell_box)}
    out = {}
    for name, box in boxes.items():
        source = "task" if name == "full" else "tool"
        view = budget.view(scene.image if name == "full" else scene.image.crop(box), source)
        out[name] = (box, np.asarray(view, dtype=np.int16))
    return out


def _ink(view: np.ndarray, box, scene) -> tuple[int, float]:
    """The digit as drawn in a view: its ink height (rows with light pixels inside the red square) and how far
    the ink's centre is from the view's centre, in view pixels."""
    k = view.shape[0] / (box[2] - box[0])
    t = scene.target_box
    x1, y1 = round((t[0] - box[0]) * k) + 1, round((t[1] - box[1]) * k) + 1
    x2, y2 = round((t[2] - box[0]) * k) - 1, round((t[3] - box[1]) * k) - 1
    ink = view[y1:y2, x1:x2, 1] > 120  # the square's green channel is ~30, the white digit's ~255
    ys, xs = np.nonzero(ink)
    half = view.shape[0] / 2
    centre = np.hypot(x1 + (xs.min() + xs.max()) / 2 - half, y1 + (ys.min() + ys.max()) / 2 - half)
    return int(ys.max() - ys.min() + 1), float(centre)


def test_digit_is_tiny_in_full_view_and_large_after_zoom():
    """How much of what the model sees the digit decides, in each view of the default budget.

    The full view shows the 896 px canvas at 112 px (8x smaller): the 60-68 px digit is ~8 px tall with
    1 px strokes. A zoom on the exact 224 px cell is shown at 112 px (2x smaller): the digit is 30-34 px,
    near the view's centre, which is what the tiny model learns to read. A loose zoom on a 448 px
    (2 x 2-cell) box is 4x smaller: the digit shrinks to ~16 px and sits off-centre.

    The same scene is drawn with digits 3 and 8; we count the pixels (and 28 x 28 visual tokens, 4 x 4
    per 112 px view) that change by more than 32 grey levels. Measured over 20 scenes: ~7 pixels and 1
    token in the full view, ~113 pixels and 4 tokens after zooming on the cell, ~26 pixels after a loose zoom.

    This is a resolution argument, not a proof that no reader could tell the digits apart at full view
    (DESIGN section 9: what the *tiny model* fails to learn is what makes zooming necessary).
    """
    budget = VisualSearchEnv().budget
    diff_px = {"full": [], "cell": [], "loose": []}
    diff_tokens = {"full": [], "cell": []}
    ink_h = {"full": [], "cell": [], "loose": []}
    off_centre = {"cell": [], "loose": []}
    for s in range(20):
        seed = task_seed("test", s)
        three, eight = _views(generate(seed, digit=3), budget), _views(generate(seed, digit=8), budget)
        for name, (_, v3) in three.items():
            assert v3.shape == (112, 112, 3)  # every view is 112 x 112 px
            changed = np.abs(v3.mean(axis=2) - eight[name][1].mean(axis=2)) > 32
            diff_px[name].append(changed.sum())
            if name in diff_tokens:
                diff_tokens[name].append(changed.reshape(4, 28, 4, 28).any(axis=(1, 3)).sum())
        scene = generate(seed)
        for name, (box, view) in _views(scene, budget).items():
            height, centre = _ink(view, box, scene)
            ink_h[name].append(height)
            if name in off_centre:
                off_centre[name].append(centre)
    # full view: the digit is ~8 px tall and touches ~7 pixels; zoomed on the cell: 30-34 px and > 100 pixels
    assert max(ink_h["full"]) <= 10 and 28 <= min(ink_h["cell"]) and max(ink_h["cell"]) <= 36
    assert np.mean(diff_px["full"]) < 12 and np.mean(diff_px["cell"]) > 90
    assert np.mean(diff_px["cell"]) > 8 * np.mean(diff_px["full"])
    assert np.mean(diff_tokens["cell"]) >= 3 * np.mean(diff_tokens["full"])
    # the loose zoom: the digit half as tall as in the cell zoom, far fewer pixels differ, and off-centre
    assert np.mean(ink_h["loose"]) < 0.6 * np.mean(ink_h["cell"]) and max(ink_h["loose"]) <= 18
    assert np.mean(diff_px["loose"]) < 0.4 * np.mean(diff_px["cell"])
    assert max(off_centre["cell"]) < 12 < 25 < min(off_centre["loose"])


def test_metadata_override_digit_changes_only_the_digit():
    seed = task_seed("train", 7)
    a, b = generate(seed, digit=1), generate(seed, digit=2)
    assert a.target_box == b.target_box and a.cell_box == b.cell_box
    diff = np.nonzero(np.any(np.asarray(a.image) != np.asarray(b.image), axis=2))
    x1, y1, x2, y2 = a.target_box
    assert diff[1].min() >= x1 and diff[1].max() < x2 and diff[0].min() >= y1 and diff[0].max() < y2
