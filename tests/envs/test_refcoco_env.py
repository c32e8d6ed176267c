"""refcoco: VLM-R1's REC format (JSON array and JSONL), IoU + format rewards, boxes outside the image."""

from __future__ import annotations

import json

import pytest
from agent_grpo_envs import DatasetError
from agent_grpo_envs.refcoco import SAMPLES, RefCocoEnv
from agent_grpo_envs.refcoco.make_samples import build
from agent_grpo_envs.visual_search import play
from PIL import Image

from agent_grpo.envs.registry import make_env
from agent_grpo.trajectory import Termination


@pytest.fixture(scope="module")
def env():
    e = make_env("refcoco")
    yield e
    e.shutdown()


def _files(tmp_path, rows, name="rows.json", size=(320, 240)):
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.new("RGB", size, (90, 120, 150)).save(tmp_path / "img" / "a.jpg")
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        path.write_text(json.dumps(rows), encoding="utf-8")
    return path


ROW = {"image": "img/a.jpg", "normal_caption": "the grey wall", "solution": [10, 20, 110, 120], "width": 320, "height": 240}


def test_samples_load_in_both_layouts(env):
    train, test = env.load_tasks("train"), env.load_tasks("test")
    assert (len(train), len(test)) == (4, 3)
    rows = json.loads((SAMPLES / "refcoco_train.json").read_text())
    assert [t.answer for t in train] == [r["solution"] for r in rows]
    assert [t.metadata["dataset"] for t in train] == ["refcoco", "refcoco+", "refcocog", "refcoco"]
    assert train[0].metadata["expression"] == rows[0]["normal_caption"]
    assert rows[0]["problem"] in train[0].question and "<answer> </answer>" in train[0].question
    assert test[1].answer == [109.0, 156.0, 147.0, 194.0]  # written as "<answer>[109, 156, 147, 194]</answer>"
    assert [t.id for t in test] == ["refcoco-test-0", "refcoco-test-1", "refcoco-test-2"]
    assert env.tool_names == () and env.budget.max_turns == 1
    prompt = env.prompt(train[0], train[0].images)
    assert "Image 0 (224x224)" in prompt[1].content[0].text


def test_samples_are_reproducible(tmp_path):
    build(tmp_path)
    for name in ("refcoco_train.json", "refcoco_val.jsonl", "images/train_0.jpg", "images/val_2.jpg"):
        assert (tmp_path / name).read_bytes() == (SAMPLES / name).read_bytes(), name


def test_iou_and_format_rewards(env):
    task = env.load_tasks("test")[0]
    x1, y1, x2, y2 = task.answer
    exact = play(env, task, [f'<think>There.</think><answer>{{"bbox_2d": [{x1:g}, {y1:g}, {x2:g}, {y2:g}]}}</answer>'])
    half = play(env, task, [f"<think>Half.</think><answer>[{x1:g}, {y1:g}, {x1 + (x2 - x1) / 2:g}, {y2:g}]</answer>"])
    nobox = play(env, task, ["<think>Hmm.</think><answer>the square</answer>"])
    rambling = play(env, task, ["it is somewhere"])
    env.score_group([exact, half, nobox, rambling])
    assert exact.rewards == {"accuracy": 1.0, "format": 1.0} and exact.reward == 2.0
    assert half.rewards["accuracy"] == pytest.approx(0.5) and half.rewards["format"] == 1.0
    assert nobox.rewards == {"accuracy": 0.0, "format": 0.0}
    assert rambling.rewards == {"accuracy": 0.0, "format": 0.0} and rambling.termination == Termination.NO_ACTION
    assert exact.termination == Termination.ANSWERED and len(exact.turns) == 1


def test_iou_threshold_gives_acc_at_half(tmp_path):
    e = RefCocoEnv(data={"test": _files(tmp_path, [ROW])}, iou_threshold=0.5)
    task = e.load_tasks("test")[0]
    near = play(e, task, ["<think>.</think><answer>[10, 20, 110, 100]</answer>"])  # IoU 0.8
    far = play(e, task, ["<think>.</think><answer>[10, 20, 50, 120]</answer>"])  # IoU 0.4
    e.score_group([near, far])
    assert (near.rewards["accuracy"], far.rewards["accuracy"]) == (1.0, 0.0)


def test_image_root_option(tmp_path):
    (tmp_path / "coco" / "train2014").mkdir(parents=True)
    Image.new("RGB", (64, 48)).save(tmp_path / "coco" / "train2014" / "x.jpg")
    ann = tmp_path / "ann" / "refcoco_val.jsonl"
    ann.parent.mkdir()
    ann.write_text(json.dumps({"image": "x.jpg", "problem": "Find the cat.", "solution": [1, 2, 30, 40]}) + "\n")
    task = RefCocoEnv(data={"test": ann}, image_root=tmp_path / "coco" / "train2014").load_tasks("test")[0]
    assert task.images[0].width == 64 and task.metadata["expression"] == "Find the cat."
    with pytest.raises(DatasetError, match=r"refcoco_val.jsonl, line 1: image file .*x.jpg does not exist"):
        RefCocoEnv(data={"test": ann}).load_tasks("test")


def test_box_outside_image_names_file_row_and_fix(tmp_path):
    bad = dict(ROW, solution=[200, 100, 330, 200])  # 10 px past the right edge of the 320 px image
    path = _files(tmp_path, [ROW, bad])
    with pytest.raises(DatasetError) as e:
        RefCocoEnv(data={"train": path}).load_tasks("train")  # width/height in the row: caught at load
    msg = str(e.value)
    assert f"{path}, row 1" in msg and "outside the 320x240 image" in msg and "box_policy: clip" in msg
    clipped = RefCocoEnv(data={"train": path}, box_policy="clip").load_tasks("train")
    assert clipped[1].answer == [200.0, 100.0, 320.0, 200.0]


def test_box_outside_image_without_size_fails_when_indexed(tmp_path):
    row = {k: v for k, v in ROW.items() if k not in ("width", "height")}
    path = _files(tmp_path, [row, dict(row, solution=[0, 0, 100, 300])], name="rows.jsonl")
    tasks = RefCocoEnv(data={"test": path}).load_tasks("test")  # opens: the sizes are unknown until decoded
    assert tasks[0].answer == [10.0, 20.0, 110.0, 120.0]
    with pytest.raises(DatasetError, match=r"rows.jsonl, line 2: box .* outside the 320x240 image"):
        tasks[1]
    clipped = RefCocoEnv(data={"test": path}, box_policy="clip").load_tasks("test")[1]
    assert clipped.answer == [0.0, 0.0, 100.0, 240.0]


def test_one_pixel_rounding_overrun_is_clipped_silently(tmp_path):
    path = _files(tmp_path, [dict(ROW, solution=[-0.4, 20, 320.7, 120])])
    assert RefCocoEnv(data={"train": path}).load_tasks("train")[0].answer == [0.0, 20.0, 320.0, 120.0]


@pytest.mark.parametrize(("row", "problem"), [
    ({"image": "img/a.jpg", "solution": [1, 2, 3, 4]}, "needs a non-empty 'normal_caption'"),
    ({"image": "img/a.jpg", "normal_caption": "x", "solution": [1, 2, 3]}, "is not a box"),
    ({"image": "img/a.jpg", "normal_caption": "x", "solution": "<answer>none</answer>"}, "is not a box"),
    ({"image": "img/a.jpg", "normal_caption": "x", "solution": [5, 5, 5, 9]}, "empty box"),
    ({"image": "img/a.jpg", "normal_caption": "x"}, r"missing field\(s\) \['solution'\]"),
    ({"image": "../img/a.jpg", "normal_caption": "x", "solution": [1, 2, 3, 4]}, "without '..'"),
    ({"image": "img/b.jpg", "normal_caption": "x", "solution": [1, 2, 3, 4]}, "does not exist; check env.options.image_root"),
])
def test_bad_rows_name_file_and_row(tmp_path, row, problem):
    path = _files(tmp_path, [ROW, row])
    with pytest.raises(DatasetError, match=rf"rows.json, row 1: .*{problem}"):
        RefCocoEnv(data={"train": path}).load_tasks("train")


def test_a_symlink_out_of_the_image_root_is_refused_when_indexed(tmp_path):
    outside = tmp_path / "outside.jpg"
    Image.new("RGB", (8, 8)).save(outside)
    path = _files(tmp_path, [dict(ROW, image="link.jpg", solution=[0, 0, 4, 4])])
    (tmp_path / "img" / "link.jpg").symlink_to(outside)
    tasks = RefCocoEnv(data={"train": path}, image_root=tmp_path / "img").load_tasks("train")
    with pytest.raises(DatasetError, match=r"rows.json, row 0: .*outside"):
        tasks[0]


def test_corrupt_image_is_a_clear_error_when_indexed(tmp_path):
    path = _files(tmp_path, [ROW])
    (tmp_path / "img" / "a.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    tasks = RefCocoEnv(data={"train": path}).load_tasks("train")
    with pytest.raises(DatasetError, match=r"rows.json, row 0: .*a.jpg is not a readable image"):
        tasks[0]


def test_missing_split_and_unknown_split(tmp_path):
    with pytest.raises(DatasetError, match="no data for split 'val'"):
        RefCocoEnv().load_tasks("val")
    with pytest.raises(ValueError, match=r"unknown split\(s\) \['dev'\]"):
        RefCocoEnv(data={"dev": tmp_path / "x.json"})
    with pytest.raises(DatasetError, match="not found"):
        RefCocoEnv(data={"train": tmp_path / "x.json"}).load_tasks("train")


def test_task_images_are_lazy_and_read_again_from_disk(env):
    from agent_grpo import pixels
    from agent_grpo.images import image_sha256

    part = env.load_tasks("train")[1].images[0]
    assert part.is_lazy
    pixels.DECODED.clear()
    assert image_sha256(part.pil) == part.sha256
