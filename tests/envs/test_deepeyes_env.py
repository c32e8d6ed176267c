"""deepeyes: verl's RL parquet as DeepEyes distributes it, read lazily; rewards; bad data named by file and row."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from agent_grpo_envs import DatasetError
from agent_grpo_envs.deepeyes import SAMPLES, DeepEyesEnv
from agent_grpo_envs.deepeyes.make_samples import SCHEMA, build, write
from agent_grpo_envs.deepeyes.parquet_rows import ParquetRows
from agent_grpo_envs.visual_search import play
from env_fixtures import answer, zoom
from PIL import Image

from agent_grpo.envs.registry import make_env


@pytest.fixture(scope="module")
def env(zoom_tools):
    e = DeepEyesEnv(tools=zoom_tools)
    yield e
    e.shutdown()


def _png(size=(32, 24), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _row(i: int, image: bytes | None = None, **changes) -> dict:
    row = {
        "data_source": "vstar" if i % 3 else "chart",
        "prompt": [{"role": "system", "content": "You are a helpful assistant."},
                   {"role": "user", "content": f"<image>\nQuestion {i}?"}],
        "images": [{"bytes": image if image is not None else _png(), "path": None}],
        "ability": "vqa",
        "reward_model": {"ground_truth": f"answer {i}", "style": "model"},
        "extra_info": {"index": i, "question": None, "split": "train"},
    }
    row.update(changes)
    return row


def test_samples_load(env):
    train, test = env.load_tasks("train"), env.load_tasks("test")
    assert (len(train), len(test)) == (6, 3)
    t = train[0]
    assert t.question == "What is the color of the small flag?" and t.answer == "yellow"
    assert train[1].question == "What word is written on the small white sign?"  # from the prompt: no extra_info.question
    assert (t.images[0].width, t.images[0].height) == (512, 384)
    assert t.metadata["data_source"] == "vstar" and t.metadata["source"].endswith("train.parquet, row 0")
    assert [x.metadata["data_source"] for x in test] == ["vstar", "vstar", "chart"]
    assert env.tool_names == ("zoom_in",) and env.budget.max_turns == 6
    assert env.rubric.weights == {"accuracy": 0.8, "format": 0.2, "tool_bonus": 1.2}


def test_samples_are_reproducible(tmp_path):
    build(tmp_path)
    for name in ("train.parquet", "test.parquet"):
        assert pq.read_table(tmp_path / name).equals(pq.read_table(SAMPLES / name)), name


def test_conditional_tool_bonus_and_match(env):
    task = env.load_tasks("train")[3]  # "cafe"
    looked = play(env, task, [zoom([0, 0, 256, 192]), answer("Cafe.")])
    guessed = play(env, task, [answer("the CAFE")])
    wrong_after_look = play(env, task, [zoom([0, 0, 256, 192]), answer("bank")])
    env.score_group([looked, guessed, wrong_after_look])
    assert looked.rewards == {"accuracy": 1.0, "format": 1.0, "tool_bonus": 1.0} and looked.reward == pytest.approx(2.2)
    assert guessed.rewards == {"accuracy": 1.0, "format": 1.0, "tool_bonus": 0.0} and guessed.reward == pytest.approx(1.0)
    assert wrong_after_look.rewards["tool_bonus"] == 0.0 and wrong_after_look.reward == pytest.approx(0.2)


def test_data_sources_filter(tmp_path):
    path = tmp_path / "d.parquet"
    write(path, [_row(i) for i in range(9)], row_group_size=4)
    tasks = DeepEyesEnv(data={"train": path}, data_sources=["chart"], allow_tools=False).load_tasks("train")
    assert [t.answer for t in tasks] == ["answer 0", "answer 3", "answer 6"]
    assert [t.metadata["row"] for t in tasks] == [0, 3, 6]


def test_several_files_per_split(tmp_path):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    write(a, [_row(i) for i in range(3)])
    write(b, [_row(i) for i in range(3, 5)])
    tasks = DeepEyesEnv(data={"train": [a, b]}, allow_tools=False).load_tasks("train")
    assert len(tasks) == 5 and tasks[4].answer == "answer 4"
    assert tasks[4].metadata["source"] == f"{b}, row 1"


def test_50k_rows_open_without_reading_rows(tmp_path):
    """A 50k-row file opens reading no row at all; a task reads only its row group (1,000 rows)."""
    n, group = 50_000, 1_000
    image = _png((28, 28))
    table = pa.table({
        "data_source": pa.array(["vstar"] * n),
        "prompt": pa.array([[{"role": "user", "content": f"<image>\nq{i}"}] for i in range(n)], type=SCHEMA.field("prompt").type),
        "images": pa.array([[{"bytes": image, "path": None}]] * n, type=SCHEMA.field("images").type),
        "reward_model": pa.array([{"ground_truth": str(i), "style": "rule"} for i in range(n)],
                                 type=SCHEMA.field("reward_model").type),
    })
    path = tmp_path / "big.parquet"
    pq.write_table(table, path, row_group_size=group)
    del table
    tasks = DeepEyesEnv(data={"train": path}, allow_tools=False).load_tasks("train")
    assert len(tasks) == n and tasks.rows.rows_read == 0
    task = tasks[37_123]
    assert (task.question, task.answer) == ("q37123", "37123") and tasks.rows.rows_read == group
    assert tasks[37_999].answer == "37999" and tasks.rows.rows_read == group  # same group: not read again
    assert tasks[-1].answer == "49999" and tasks.rows.rows_read == 2 * group
    assert task.images[0].pil.size == (28, 28)  # decoded again from its row group when needed
    assert tasks.rows.rows_read <= 3 * group


def test_missing_column_names_file_and_fix(tmp_path):
    path = tmp_path / "no_reward.parquet"
    pq.write_table(pa.Table.from_pylist([_row(0)]).drop_columns(["reward_model"]), path)
    with pytest.raises(DatasetError) as e:
        DeepEyesEnv(data={"train": path}, allow_tools=False).load_tasks("train")
    msg = str(e.value)
    assert str(path) in msg and "missing column(s) ['reward_model']" in msg and "need columns prompt, images" in msg


def test_corrupt_image_names_file_row_and_fix(tmp_path):
    path = tmp_path / "bad.parquet"
    write(path, [_row(0), _row(1), _row(2, image=b"\x89PNG broken"), _row(3)], row_group_size=2)
    env = DeepEyesEnv(data={"train": path}, allow_tools=False)
    tasks = env.load_tasks("train")  # opens: images are decoded when a task is indexed
    assert tasks[1].answer == "answer 1" and tasks[3].answer == "answer 3"
    with pytest.raises(DatasetError) as e:
        tasks[2]
    msg = str(e.value)
    assert f"{path}, row 2, image 0" in msg and "not a readable image" in msg and "drop the row" in msg
    with pytest.raises(DatasetError, match=r"bad.parquet, row 2, image 0"):
        DeepEyesEnv(data={"train": path}, verify_images=True, allow_tools=False).load_tasks("train")


def test_row_index_out_of_range_names_the_file(tmp_path):
    path = tmp_path / "small.parquet"
    write(path, [_row(0), _row(1)])
    tasks = DeepEyesEnv(data={"train": path}, allow_tools=False).load_tasks("train")
    with pytest.raises(IndexError, match=rf"task index 5 out of range for 2 tasks of {path}; use an index below 2"):
        tasks[5]
    rows = ParquetRows([path], ["prompt"], fix="")
    with pytest.raises(IndexError, match=rf"row 2 out of range: {path} hold 2 rows"):
        rows[2]


@pytest.mark.parametrize(("changes", "problem"), [
    ({"reward_model": {"ground_truth": "", "style": "x"}}, "needs a non-empty 'ground_truth'"),
    ({"prompt": [{"role": "system", "content": "hi"}]}, "'prompt' has no user message"),
    ({"prompt": [{"role": "user", "content": "<image>"}]}, "has no question text"),
    ({"images": []}, "'images' must be a non-empty list"),
    ({"images": [{"bytes": None, "path": "pics/a.jpg"}]}, "set env.options.image_root"),
])
def test_bad_rows_name_file_row_and_fix(tmp_path, changes, problem):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist([_row(0), _row(1, **changes)]), path)
    tasks = DeepEyesEnv(data={"train": path}, allow_tools=False).load_tasks("train")
    assert tasks[0].answer == "answer 0"
    with pytest.raises(DatasetError, match=rf"rows.parquet, row 1.*{problem}"):
        tasks[1]


def test_image_paths_under_image_root(tmp_path):
    (tmp_path / "pics").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "pics" / "a.png")
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist([_row(0, images=[{"bytes": None, "path": "pics/a.png"}])]), path)
    task = DeepEyesEnv(data={"train": path}, image_root=tmp_path, allow_tools=False).load_tasks("train")[0]
    assert task.images[0].width == 40
    pq.write_table(pa.Table.from_pylist([_row(0, images=[{"bytes": None, "path": "../outside.png"}])]), path)
    with pytest.raises(DatasetError, match="rows.parquet, row 0, image 0"):
        DeepEyesEnv(data={"train": path}, image_root=tmp_path, allow_tools=False).load_tasks("train")[0]


def test_not_parquet_and_missing_file(tmp_path):
    bad = tmp_path / "x.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(DatasetError, match="cannot read .*x.parquet as parquet"):
        DeepEyesEnv(data={"train": bad}, allow_tools=False).load_tasks("train")
    with pytest.raises(DatasetError, match="not found"):
        DeepEyesEnv(data={"train": tmp_path / "none.parquet"}, allow_tools=False).load_tasks("train")


def test_reward_option(tmp_path):
    assert make_env("deepeyes", reward="match").rubric.weights["accuracy"] == 0.8
    with pytest.raises(ValueError, match="base_url"):  # the judge's own options are checked (tests/rewards/test_judge.py)
        DeepEyesEnv(reward="judge", allow_tools=False)
    with pytest.raises(ValueError):
        DeepEyesEnv(reward="fuzzy", allow_tools=False)
    assert DeepEyesEnv(tool_bonus=0.0, allow_tools=False).rubric.weights["tool_bonus"] == 0.0


@pytest.mark.slow
def test_training_on_a_corrupt_row_stops_with_the_message_not_a_traceback(tmp_path):
    """In a run, the bad row's task is built before its rollouts: `agent-grpo train` ends with file, row and fix."""
    from typer.testing import CliRunner

    from agent_grpo.cli.main import app

    data = tmp_path / "bad.parquet"
    write(data, [_row(0), _row(1, image=b"GIF89a broken")])
    config = tmp_path / "run.yaml"
    config.write_text(
        f"out_dir: {tmp_path / 'run'}\nsteps: 1\nenv: {{name: deepeyes, num_eval_tasks: 1, options: {{data: {{train: {data}, "
        f"test: {data}}}}}}}\nrollout: {{tasks_per_step: 2, group_size: 2, max_total_tokens: 1024, "
        "sampling: {max_new_tokens: 8}}\ntensorboard: false\n"
    )
    result = CliRunner().invoke(app, ["train", str(config)], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert f"error: {data}, row 1, image 0" in result.output.replace("\n", "") and "Traceback" not in result.output


def test_task_images_are_lazy_and_read_again_from_the_parquet(env):
    from agent_grpo import pixels
    from agent_grpo.images import image_sha256

    tasks = env.load_tasks("test")
    part = tasks[2].images[0]
    assert part.is_lazy and part._pil is None
    pixels.DECODED.clear()
    before = tasks.rows.rows_read
    assert image_sha256(part.pil) == part.sha256 and tasks.rows.rows_read == before  # its row group is still held


def test_math_rows_are_compared_as_math(tmp_path):
    path = tmp_path / "math.parquet"
    rows = [_row(0, data_source="thinklite_eureka", reward_model={"ground_truth": "\\frac{1}{2}", "style": "rule"}),
            _row(1, data_source="vstar", reward_model={"ground_truth": "0.5", "style": "model"})]
    write(path, rows)
    e = DeepEyesEnv(data={"train": path}, allow_tools=False)
    math_row, plain_row = e.load_tasks("train")
    trajs = [play(e, math_row, [answer("0.5")]), play(e, plain_row, [answer("1/2")]), play(e, plain_row, [answer("0.5")])]
    for t in trajs:
        e.score_group([t])
    assert [t.rewards["accuracy"] for t in trajs] == [1.0, 0.0, 1.0]
    only_exact = DeepEyesEnv(data={"train": path}, math_sources=[], allow_tools=False)
    t = play(only_exact, only_exact.load_tasks("train")[0], [answer("0.5")])
    only_exact.score_group([t])
    assert t.rewards["accuracy"] == 0.0


def test_regroup_keeps_rows_and_makes_small_groups(tmp_path):
    from agent_grpo_envs.deepeyes.regroup import regroup

    big = tmp_path / "big.parquet"
    write(big, [_row(i) for i in range(10)], row_group_size=10)
    small = tmp_path / "small.parquet"
    assert regroup(big, small, rows=4) == 10
    meta = pq.ParquetFile(small).metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [4, 4, 2]
    assert pq.read_table(small).equals(pq.read_table(big))
    tasks = DeepEyesEnv(data={"train": small}, allow_tools=False).load_tasks("train")
    assert tasks[9].answer == "answer 9" and tasks.rows.rows_read == 2
    with pytest.raises(ValueError, match="is the input file"):
        regroup(small, small)
