"""`agent-grpo rollouts`: any installed environment; `--out` replaces only a folder an earlier rollouts run wrote."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from agent_grpo.cli.main import app
from agent_grpo.cli.rollouts import MARKER
from agent_grpo.store import RunStore


def run(*args: str):
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})
    return result, " ".join(result.output.split())


def test_out_dot_never_deletes_the_working_folder(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path)
    result, output = run("rollouts", "--n", "1", "--group-size", "2", "--out", ".")
    assert result.exit_code == 2 and "nothing was deleted" in output and MARKER in output, result.output
    assert (tmp_path / "pyproject.toml").read_text() == "[project]\n" and (tmp_path / "src").is_dir()


def test_out_that_is_a_file_is_refused(tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    result, output = run("rollouts", "--n", "1", "--group-size", "2", "--out", str(file))
    assert result.exit_code == 2 and "is a file" in output and file.read_text() == "mine"


def test_an_earlier_rollouts_run_is_replaced(tmp_path):
    out = tmp_path / "run"
    for n in (2, 1):
        result, _ = run("rollouts", "--n", str(n), "--group-size", "2", "--out", str(out))
        assert result.exit_code == 0, result.output
        assert (out / MARKER).is_file()
        assert len(RunStore.open(out)) == 2 * n  # the second run replaced the first, not appended to it


@pytest.mark.slow
def test_rollouts_runs_any_installed_env_with_the_tiny_policy(tmp_path):
    out = tmp_path / "run"
    result, output = run("rollouts", "--env", "vstar", "--policy", "tiny", "--n", "1", "--group-size", "2",
                         "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "vstar, tiny policy" in output
    first = json.loads((out / "trajectories.jsonl").read_text().splitlines()[0])
    assert first["trajectory"]["env"] == "vstar"


def test_an_env_without_a_scripted_policy_says_to_use_tiny(tmp_path):
    result, output = run("rollouts", "--env", "grounding", "--n", "1", "--out", str(tmp_path / "run"))
    assert result.exit_code == 2 and "grounding has no scripted policy" in output and "--policy tiny" in output
