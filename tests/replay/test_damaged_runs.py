"""Crafted and damaged run directories: every replay command works around the damage and says so,
or refuses with a message; none raises a traceback, writes outside its output folder, or reads a
file outside the run (path-traversal hashes, symlinks out), and `--strict` turns a skip into exit 1."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from damage import DAMAGES
from scripted_run import TinyEnv, build_run, tz_note, tz_zoom
from typer.testing import CliRunner

from agent_grpo.cli import replay as cli
from agent_grpo.tools.registry import ToolRegistry

# What each damage must show up as in the output of a command that read the damaged item.
COMMANDS = ("list", "show", "html", "rescore", "rerun", "export", "diff")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pristine") / "run"
    build_run(run, steps=(0, 1), n_tasks=1)  # 2 groups x 4 members
    return run


@pytest.fixture
def tools(monkeypatch):
    monkeypatch.setattr("agent_grpo.replay.rescore.make_env", lambda name: TinyEnv())
    monkeypatch.setattr(cli, "load_tools", lambda: ToolRegistry([tz_zoom, tz_note]))


def snapshot(root: Path, skip: Path) -> dict[str, tuple]:
    """Every path under `root` but `skip`, with its size and modification time (links not followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p == skip or skip in p.parents:
                continue
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def args_for(command: str, run: Path, out: Path) -> list[str]:
    return {
        "list": ["list", str(run), "--limit", "0"],
        "show": ["show", str(run), "s0-train-0-0-0"],
        "html": ["html", str(run), "--out", str(out / "r.html"), "--max-groups", "0"],
        "rescore": ["rescore", str(run), "--out", str(out / "rescored.jsonl")],
        "rerun": ["rerun", str(run)],
        "export": ["export", str(run), str(out / "sft"), "--no-hf"],
        "diff": ["diff", str(run), "0", "1"],
    }[command]


def invoke(args: list[str]):
    return CliRunner().invoke(cli.replay_app, args, env={"COLUMNS": "250"})


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_every_command_survives(damage, pristine, tools, tmp_path):
    run, victim, out = tmp_path / "run", tmp_path / "victim", tmp_path / "out"
    shutil.copytree(pristine, run, symlinks=True)
    victim.mkdir()
    out.mkdir()
    (victim / "keep.txt").write_text("not the project's")
    DAMAGES[damage](run, victim)
    before = snapshot(tmp_path, skip=out)
    for command in COMMANDS:
        res = invoke(args_for(command, run, out))
        where = f"{damage} / {command}: exit {res.exit_code}\n{res.output[-3000:]}"
        assert res.exception is None or isinstance(res.exception, SystemExit), where + repr(res.exception)
        assert "Traceback" not in res.output, where
        assert res.exit_code in (0, 1, 2), where
        if res.exit_code == 2:
            assert "Error" in res.output or "Invalid value" in res.output, where  # a message, not silence
        if res.exit_code == 1:  # the others skip what is damaged unless --strict
            assert command == "show" or (command == "rerun" and "differences" in res.output), where
        assert snapshot(tmp_path, skip=out) == before, f"{where}: something outside {out} changed"
    assert not list(tmp_path.rglob("*evil*")), "a crafted hash became a file name"
    export = out / "sft" / "sft.jsonl"
    if export.exists():
        for line in export.read_text().splitlines():
            assert "evil" not in line and ".." not in line


DAMAGED_IMAGE = ("altered_image", "truncated_image", "not_an_image", "png_bomb", "quiet_png_bomb", "image_symlink_out",
                 "images_dir_symlink_out", "traversal_sha", "uppercase_sha")


@pytest.mark.parametrize("damage", DAMAGED_IMAGE)
def test_a_damaged_image_is_reported_and_strict_fails(damage, pristine, tools, tmp_path):
    run, victim, out = tmp_path / "run", tmp_path / "victim", tmp_path / "out"
    shutil.copytree(pristine, run, symlinks=True)
    victim.mkdir()
    DAMAGES[damage](run, victim)
    res = invoke(["export", str(run), str(out), "--no-hf"])
    assert res.exit_code == 0, res.output
    assert "skipped" in res.output and "s0-train-0-0-0" in res.output
    exported = {line.split('"id": "')[1].split('"')[0] for line in (out / "sft.jsonl").read_text().splitlines()}
    assert "s0-train-0-0-0" not in exported and len(exported) >= 4  # only the trajectories with that image left out
    res = invoke(["export", str(run), str(out), "--no-hf", "--strict"])
    assert res.exit_code == 1, res.output
    res = invoke(["html", str(run), "--out", str(out / "r.html"), "--strict"])
    assert res.exit_code == 1 and "damaged image" in res.output, res.output
    if damage not in ("traversal_sha", "uppercase_sha"):
        assert "image damaged" in (out / "r.html").read_text()


@pytest.mark.parametrize("damage", ["garbled_record_same_length", "truncated_record"])
def test_a_damaged_record_is_skipped_by_every_reader(damage, pristine, tools, tmp_path):
    run, out = tmp_path / "run", tmp_path / "out"
    shutil.copytree(pristine, run)
    DAMAGES[damage](run, tmp_path)
    for command in ("html", "export", "diff", "rerun", "rescore"):
        res = invoke(args_for(command, run, out) + ["--strict"])
        assert res.exit_code == 1, f"{command}: {res.output}"
        assert "damaged" in res.output or "corrupt" in res.output, f"{command}: {res.output}"
        res = invoke(args_for(command, run, out))
        assert res.exit_code == 0, f"{command}: {res.output}"
    # Only the damaged trajectory is missing from the export: the ones after it are still found.
    n = len((out / "sft" / "sft.jsonl").read_text().splitlines())
    assert n == 7


def test_a_png_bomb_is_refused_by_the_image_store(pristine, tmp_path):
    from damage import bomb_png

    from agent_grpo.errors import StoreError
    from agent_grpo.store.image_store import ImageStore

    store = ImageStore(tmp_path)
    sha = "ab" * 32
    (tmp_path / "ab").mkdir()
    for size in (100_000, 9000):
        (tmp_path / "ab" / f"{sha}.png").write_bytes(bomb_png(size, size))
        with pytest.raises(StoreError, match="more than any stored image|cannot read"):
            store.load(sha)
