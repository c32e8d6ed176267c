"""`agent-grpo eval` as a benchmark harness on the shipped V*-Bench and HR-Bench samples: environment options from
`--set`, per-category tables, tool use, the environment's own columns, results.json / results.md.

A scripted engine stands in for the model (`make_engine` is the one place eval builds one), so every answer,
and so every number in the tables, is known."""

from __future__ import annotations

import json

import pytest
from agent_grpo_envs.hrbench import HRBenchEnv
from agent_grpo_envs.vstar import SAMPLES, VStarEnv
from typer.testing import CliRunner

import agent_grpo.cli.eval as eval_cli
from agent_grpo.cli.main import app


def run(*args: str):
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})
    return result, " ".join(result.output.split())


def _answer(text: str) -> str:
    return f"<think>Done.</think>\n<answer>{text}</answer>"


def _zoom(box) -> str:
    call = json.dumps({"name": "zoom_in", "arguments": {"bbox_2d": [round(v) for v in box]}})
    return f"<think>Look closer.</think>\n<tool_call>{call}</tool_call>"


@pytest.fixture(scope="module")
def chat():
    from agent_grpo.models.chat import ChatFormat
    from agent_grpo.models.tiny import build_tiny_model

    return ChatFormat(build_tiny_model(seed=0)[1])


@pytest.fixture
def scripted(monkeypatch, chat):
    """Install a scripted engine: `plans[task id]` is the list of turns every sample of that task plays."""
    from agent_grpo.rollout import ScriptedEngine

    plans: dict[str, list[str]] = {}

    def script(request) -> str:
        task_id = request.key.removeprefix("eval-scripted-").rpartition("-")[0]
        turns = plans[task_id]
        return turns[min(request.turn, len(turns) - 1)]

    monkeypatch.setattr(eval_cli, "make_engine", lambda checkpoint, seed: (ScriptedEngine(script, chat), chat, "scripted"))
    return plans


def _table_rows(output: str, first_cell: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in output.splitlines() if line.strip().startswith(f"| {first_cell}")]


@pytest.mark.slow  # ~7 s: two rollouts of 1,000-token images through the real chat template
def test_vstar_from_a_folder_prints_per_category_and_zoom_columns(tmp_path, scripted):
    tasks = list(VStarEnv(allow_tools=False).load_tasks())
    wrong = {"B": "A", "C": "A", "D": "A", "A": "B"}
    # direct_attributes: right, right, wrong; relative_position: right, wrong. Task 0 zooms on its target first.
    for i, t in enumerate(tasks):
        scripted[t.id] = [_answer(t.answer if i in (0, 1, 3) else wrong[t.answer])]
    x1, y1, x2, y2 = tasks[0].metadata["target_box"]
    scripted[tasks[0].id] = [_zoom([x1 - 40, y1 - 40, x2 + 40, y2 + 40]), _answer(f"({tasks[0].answer})")]

    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", "tiny", "--env", "vstar", "--set", f"root={SAMPLES}", "--n", "5",
                                      "--max-total-tokens", "4096", "--out", str(out)], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    head, _, row = [line for line in result.output.splitlines() if line.startswith("|")][:3]
    columns = [c.strip() for c in head.strip("|").split("|")]
    assert columns[6:8] == ["zoom covers target", "zoom IoU (target)"] and "needless zooms / traj" not in columns
    cells = dict(zip(columns, [c.strip() for c in row.strip("|").split("|")], strict=True))
    assert cells["accuracy (95% CI)"].startswith("60.0% (") and cells["tool calls / traj"] == "0.20"
    assert cells["with a call"] == "20%" and cells["failed calls"] == "0%" and cells["zoom covers target"] == "1.00"
    assert _table_rows(result.output, "direct_attributes") == [["direct_attributes", "3", "3", "66.7%", "66.7%"]]
    assert _table_rows(result.output, "relative_position") == [["relative_position", "2", "2", "50.0%", "50.0%"]]
    assert _table_rows(result.output, "overall") == [["overall", "5", "5", "60.0%", "60.0%"]]
    assert "protocol: V*-Bench" in result.output

    saved = json.loads((out / "results.json").read_text())[0]
    assert saved["env"] == "vstar" and saved["accuracy"] == pytest.approx(0.6) and saved["tasks"] == 5
    assert {c["category"]: c["accuracy"] for c in saved["categories"]} == pytest.approx(
        {"direct_attributes": 2 / 3, "relative_position": 0.5})
    assert saved["tool_use"] == {"calls_per_traj": 0.2, "with_call": 0.2, "failed_per_traj": 0.0,
                                 "failed_share": 0.0, "errors": {}}
    assert saved["metrics"]["zoom_target_coverage"] == 1.0 and saved["labels"]["zoom_precision"] == "zoom IoU (target)"
    assert "| direct_attributes | 3 | 3 | 66.7% | 66.7% |" in (out / "results.md").read_text()


@pytest.mark.slow
def test_hrbench_8k_averages_cycles_and_counts_k_samples(tmp_path, scripted):
    tasks = list(HRBenchEnv(version="8k", allow_tools=False).load_tasks())
    for t in tasks:
        flag = t.metadata["choices"][t.answer] == "blue"  # single: right in every cycle
        cross_first = t.metadata["category"] == "cross" and t.metadata["cycle_category"] == "cycle_1"
        scripted[t.id] = [_answer(t.metadata["choices"][t.answer] if flag or cross_first else "E")]

    out = tmp_path / "eval"
    result, output = run("eval", "tiny", "--env", "hrbench", "--set", "version=8k", "--k", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    # per cycle: cycle_1 2/3 right, cycles 2-4 1/3 -> (2/3 + 3 x 1/3) / 4 = 5/12; single 1/2; cross (1 + 0 x 3) / 4
    assert _table_rows(result.output, "single") == [["single", "8", "16", "50.0%", "50.0%"]]
    assert _table_rows(result.output, "cross") == [["cross", "4", "8", "25.0%", "25.0%"]]
    assert _table_rows(result.output, "overall") == [["overall", "12", "24", "41.7%", "41.7%"]]
    saved = json.loads((out / "results.json").read_text())[0]
    assert saved["k"] == 2 and saved["accuracy"] == pytest.approx(5 / 12)
    assert saved["sample_accuracy"] == pytest.approx(5 / 12)  # equal cycles: the plain mean agrees
    assert saved["tool_use"]["with_call"] == 0.0 and saved["metrics"] == {}
    assert "zoom" not in output.split("answered")[0]  # HR-Bench declares no zoom columns


def test_the_default_token_cap_fits_the_visual_budget():
    env = VStarEnv(allow_tools=False)  # 5 turns, 5 x 1,024 visual tokens
    assert eval_cli.token_limit(env, max_new_tokens=96) == 5 * 1024 + 5 * (96 + 256) + 512


def test_set_errors_name_the_key_before_any_model_loads(monkeypatch):
    monkeypatch.setattr(eval_cli, "make_engine", lambda *a: pytest.fail("a model was loaded"))
    result, output = run("eval", "tiny", "--env", "vstar", "--set", "rot=/data")
    assert result.exit_code == 2 and "--set rot: vstar has no option 'rot'; it accepts root, tool_bonus" in output
    result, output = run("eval", "tiny", "--env", "vstar", "--set", "tool_bonus=lots")
    assert result.exit_code == 2 and "--set tool_bonus:" in output and "valid number" in output
    result, output = run("eval", "tiny", "--env", "hrbench", "--set", "version=16k")
    assert result.exit_code == 2 and "--set version:" in output and "'4k' or '8k'" in output
    result, output = run("eval", "tiny", "--env", "vstar", "--set", "root")
    assert result.exit_code == 2 and "write key=value" in output
    result, output = run("eval", "tiny", "--env", "vstar", "--set", "root=/no/such/folder")
    assert result.exit_code == 2 and "test_questions.jsonl not found: point root=" in output
    result, output = run("eval", "tiny", "--env", "visual-search", "--set", "config.test_size=many")
    assert result.exit_code == 2 and "--set config.test_size:" in output
