"""hrbench: reading HR-Bench's TSV as distributed (shipped samples and hand-made files), laziness, clear errors,
the protocol's prompt and scoring."""

from __future__ import annotations

import base64
import io
import tracemalloc

import pytest
from agent_grpo_envs import DatasetError
from agent_grpo_envs.hrbench import SAMPLE_FILES, HRBenchEnv, TsvRows, build_prompt
from agent_grpo_envs.hrbench.make_samples import COLUMNS, build, write_tsv
from agent_grpo_envs.visual_search import play
from env_fixtures import answer
from PIL import Image

from agent_grpo.evaluate import summarize
from agent_grpo.trajectory import Termination


@pytest.fixture(scope="module")
def env(zoom_tools):
    e = HRBenchEnv(tools=zoom_tools)
    yield e
    e.shutdown()


def _png_b64(color=(10, 120, 200), size=(64, 48)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _row(index: int, **overrides) -> dict:
    row = {"index": str(index), "question": "What colour is the roof?", "answer": "B", "category": "single",
           "cycle_category": "c1", "A": "red", "B": "blue", "C": "green", "D": "grey", "image": _png_b64()}
    return {**row, **overrides}


def _tsv(tmp_path, rows, columns=COLUMNS):
    path = tmp_path / "hr_bench_4k.tsv"
    write_tsv(path, [{c: r[c] for c in COLUMNS} for r in rows])
    if columns != COLUMNS:  # a header without some columns
        lines = ["\t".join(columns)] + ["\t".join(r[c] for c in columns) for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_samples_load_with_categories_cycles_and_rotated_options(env):
    tasks = env.load_tasks()
    assert len(tasks) == 12 and env.splits == ("test",)
    meta = [t.metadata for t in tasks]
    assert [m["category"] for m in meta[:3]] == ["single", "single", "cross"]
    assert [m["cycle_category"] for m in meta] == [f"cycle_{c}" for c in range(1, 5) for _ in range(3)]
    # each question's right option moves through A, B, C, D over the four cycles
    assert [t.answer for t in tasks[0::3]] == ["A", "B", "C", "D"]
    assert all(t.metadata["choices"][t.answer] == "blue" for t in tasks[0::3])
    # the rotations name the first cycle's row for their image (VLMEvalKit's reference): the same pixels
    assert len({t.images[0].sha256 for t in tasks[0::3]}) == 1
    assert (tasks[0].images[0].width, tasks[0].images[0].height) == (1600, 900)
    assert HRBenchEnv(version="8k", allow_tools=False).load_tasks()[0].images[0].width == 2240
    with pytest.raises(ValueError, match="unknown split 'train'"):
        env.load_tasks("train")


def test_the_prompt_is_vlmevalkits_and_a_quoted_multiline_question_survives(env):
    task = env.load_tasks()[3]
    assert task.question == (
        "Question: What is the color of the small flag on the pole?\nOptions:\nA. yellow\nB. blue\nC. red\n"
        "D. green\nPlease select the correct answer from the options above. \n"
    )
    cross = env.load_tasks()[2]  # its question holds a quote, a tab and a newline (csv quoting)
    assert cross.question.startswith('Question: Where is the red ball relative to the "green"\tbox?\n(Both are')
    assert build_prompt("Q?", {"A": "x", "B": "y"}) == (
        "Question: Q?\nOptions:\nA. x\nB. y\nPlease select the correct answer from the options above. \n")


def test_rows_and_images_are_read_on_access(env):
    rows = env._rows
    assert vars(rows).keys() == {"path", "parse", "_starts", "_ends", "_by_index", "columns"}  # no cells kept
    task = env.load_tasks()[0]
    assert task.images[0].is_lazy  # the pixels are re-decoded from the file when needed
    assert task.images[0].pil.size == (1600, 900)


def test_a_large_tsv_opens_without_holding_its_images(tmp_path):
    blob = base64.b64encode(bytes(range(256)) * 2000).decode()  # ~680 kB a row, never decoded at open
    path = _tsv(tmp_path, [_row(i, image=blob) for i in range(30)])
    assert path.stat().st_size > 20_000_000
    tracemalloc.start()
    rows = TsvRows(path, ("index", "image"), lambda n, row: row["index"])
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(rows) == 30 and current < 200_000  # offsets and indices, not 20 MB of base64
    assert rows[29] == "29"


def test_corrupt_base64_names_file_row_and_fix(tmp_path):
    path = _tsv(tmp_path, [_row(0), _row(1, image="iVBORw0KGgo" + "!" * 80)])
    env = HRBenchEnv(tsv=path, allow_tools=False)  # rows check out; images are decoded on use
    assert env.load_tasks()[0].images[0].width == 64
    with pytest.raises(DatasetError, match=r"hr_bench_4k\.tsv, row 2: the image column is not valid base64 .*re-download"):
        env.load_tasks()[1]


def test_base64_that_is_not_an_image_and_a_dangling_reference(tmp_path):
    junk = base64.b64encode(b"not an image at all" * 10).decode()
    path = _tsv(tmp_path, [_row(0, image=junk), _row(1, image="7")])
    env = HRBenchEnv(tsv=path, allow_tools=False)
    with pytest.raises(DatasetError, match=r"row 1: the image is not a readable picture"):
        env.load_tasks()[0]
    with pytest.raises(DatasetError, match=r"row 2: the image cell '7' is neither base64 data nor the index"):
        env.load_tasks()[1]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([_row(0, answer="E")], r"row 1: answer 'E' is not one of the options \['A', 'B', 'C', 'D'\]"),
        ([_row(0), _row(1, question=" ")], r"row 2: empty question"),
        ([_row(0, image="")], r"row 1: empty image cell"),
    ],
)
def test_bad_rows_fail_at_open_naming_the_row(tmp_path, rows, message):
    with pytest.raises(DatasetError, match=message):
        HRBenchEnv(tsv=_tsv(tmp_path, rows), allow_tools=False)


def test_missing_column_truncated_file_and_missing_file(tmp_path):
    no_category = [c for c in COLUMNS if c != "category"]
    path = _tsv(tmp_path, [_row(0)], columns=no_category)
    with pytest.raises(DatasetError, match=r"hr_bench_4k\.tsv: missing column\(s\) \['category'\].*DreamMr/HR-Bench"):
        HRBenchEnv(tsv=path, allow_tools=False)
    path.write_text("\t".join(COLUMNS) + '\n0\t"What is\tit?\n', encoding="utf-8")
    with pytest.raises(DatasetError, match="unclosed quote; the file is truncated"):
        HRBenchEnv(tsv=path, allow_tools=False)
    path.write_text("\t".join(COLUMNS) + "\n0\tQ\tA\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"row 1: 3 fields where the header has 10"):
        HRBenchEnv(tsv=path, allow_tools=False)
    with pytest.raises(DatasetError, match="not found: point tsv= at hr_bench_4k.tsv"):
        HRBenchEnv(tsv=tmp_path / "nowhere.tsv", allow_tools=False)


def test_answers_score_with_the_protocols_extraction(env):
    task = env.load_tasks()[3]  # answer B ("blue") in cycle 2
    right = play(env, task, [answer("B. blue")])
    by_text = play(env, task, [answer("The flag is blue.")])
    ambiguous = play(env, task, [answer("A or B")])
    env.score_group([right, by_text, ambiguous])
    assert right.termination == Termination.ANSWERED
    assert [t.rewards["accuracy"] for t in (right, by_text, ambiguous)] == [1.0, 1.0, 0.0]


def test_the_published_number_is_the_mean_over_cycles(env):
    # Right in every rotation of the flag question only: 1 of 3 per cycle -> 1/3; "single" 1/2, "cross" 0.
    tasks = env.load_tasks()
    trajs = [play(env, t, [answer(t.answer if t.metadata["choices"][t.answer] == "blue" else "Z")]) for t in tasks]
    env.score_group(trajs)
    r = summarize("p", env.name, "test", trajs, k=1, protocol=env.eval_protocol())
    assert r.accuracy == pytest.approx(1 / 3) and r.sample_accuracy == pytest.approx(1 / 3)
    assert {c.category: c.accuracy for c in r.categories} == pytest.approx({"single": 0.5, "cross": 0.0})
    assert "mean over cycles" in r.protocol


def test_samples_are_reproducible(tmp_path):
    build(tmp_path)
    for version, path in SAMPLE_FILES.items():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), version
