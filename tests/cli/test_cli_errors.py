"""Every command ends with a message and exit status 2 on bad paths and input; real bugs keep their traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import agent_grpo.cli.envs as envs_cli
from agent_grpo.cli.main import app


def run(*args: str):
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})
    return result, " ".join(result.output.split())


@pytest.fixture
def no_model_loads(monkeypatch):
    import agent_grpo.train.policy as policy

    monkeypatch.setattr(policy, "build_policy", lambda *a, **k: pytest.fail("a model was loaded"))


def test_eval_on_a_run_directory_names_its_checkpoint(tmp_path, no_model_loads):
    (tmp_path / "checkpoints" / "step_000004" / "model").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step_000004" / "model" / "config.json").write_text("{}")
    result, output = run("eval", str(tmp_path))
    assert result.exit_code == 2 and "Traceback" not in output, result.output
    assert "is a run directory" in output and str(tmp_path / "checkpoints" / "step_000004" / "model") in output


def test_eval_on_a_folder_without_a_model_says_what_to_pass(tmp_path, no_model_loads):
    (tmp_path / "step_000004").mkdir()
    result, output = run("eval", str(tmp_path / "step_000004"))
    assert result.exit_code == 2 and "holds no model" in output and "agent-grpo model tiny" in output
    result, output = run("eval", str(tmp_path / "missing"))
    assert result.exit_code == 2 and "is not a folder" in output


def test_eval_on_an_uninstalled_env_or_split_fails_before_the_model_loads(no_model_loads):
    result, output = run("eval", "tiny", "--env", "no-such-env")
    assert result.exit_code == 2 and "'no-such-env' is not installed" in output and "visual-search" in output
    result, output = run("eval", "tiny", "--split", "validation")
    assert result.exit_code == 2 and "no split 'validation'" in output


def test_eval_out_that_is_a_file_is_refused(tmp_path, no_model_loads):
    file = tmp_path / "results"
    file.write_text("mine")
    result, output = run("eval", "tiny", "--out", str(file))
    assert result.exit_code == 2 and "--out" in output and "is not a folder" in output
    assert file.read_text() == "mine"


def test_envs_show_on_a_wrong_env_or_a_file_out_is_a_message(tmp_path):
    result, output = run("envs", "show", "no-such-env", "--out", str(tmp_path))
    assert result.exit_code == 2 and "Traceback" not in output
    assert "error: environment 'no-such-env' is not installed" in output
    file = tmp_path / "samples"
    file.write_text("mine")
    result, output = run("envs", "show", "visual-search", "--out", str(file))
    assert result.exit_code == 2 and "is not a folder" in output and file.read_text() == "mine"


def test_rescore_with_an_uninstalled_env_is_a_message(tmp_path):
    from agent_grpo.store import RunStore

    RunStore.create(tmp_path / "run").close()
    result, output = run("replay", "rescore", str(tmp_path / "run"), "--env", "no-such-env")
    assert result.exit_code == 2 and "'no-such-env' is not installed" in output, result.output


def test_a_real_bug_still_shows_its_traceback(monkeypatch, tmp_path):
    def broken(name, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(envs_cli, "make_env", broken)
    result = CliRunner().invoke(app, ["envs", "show", "visual-search", "--out", str(tmp_path)])
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)
