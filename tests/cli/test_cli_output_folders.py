"""`demo --fresh` and `rollouts --out` delete only folders agent-grpo wrote (marker file); never anyone else's."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from agent_grpo.cli._outputs import MARKER, claim, replace
from agent_grpo.cli.main import app
from agent_grpo.errors import ConfigError


def run(*args: str):
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})
    return result, " ".join(result.output.split())


def test_demo_fresh_refuses_a_folder_agent_grpo_did_not_write(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    result, output = run("demo", "--quick", "--fresh", "--out", str(tmp_path))
    assert result.exit_code == 2 and "nothing was deleted" in output, result.output
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


def test_demo_out_that_is_a_file_is_refused(tmp_path):
    file = tmp_path / "demo"
    file.write_text("mine")
    result, output = run("demo", "--quick", "--out", str(file))
    assert result.exit_code == 2 and "is not a folder" in output and file.read_text() == "mine"


def test_only_marked_or_empty_folders_are_replaced(tmp_path):
    ours = tmp_path / "ours"
    claim(ours, "demo")
    (ours / "results.md").write_text("old")
    replace(ours, "demo")
    assert sorted(p.name for p in ours.iterdir()) == [MARKER]  # emptied, still marked
    empty = tmp_path / "empty"
    empty.mkdir()
    replace(empty, "demo")
    assert (empty / MARKER).is_file()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes").write_text("keep")
    claim(theirs, "demo")  # written into (a resumed demo) but never marked: it stays irreplaceable
    assert not (theirs / MARKER).exists()
    with pytest.raises(ConfigError, match="nothing was deleted"):
        replace(theirs, "demo")
    assert (theirs / "notes").read_text() == "keep"
    link = tmp_path / "link"
    link.symlink_to(ours)
    with pytest.raises(ConfigError, match="symbolic link"):
        replace(link, "demo")
