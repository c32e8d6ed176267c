"""Stored hashes and paths are data: validated and kept under their roots (issue 15 item 1); the
index is checked against the records and repaired from them (item 2)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from scripted_run import build_run, comparable

from agent_grpo.errors import StoreError
from agent_grpo.paths import UnsafePathError, contained_path
from agent_grpo.store import RunStore
from agent_grpo.store.image_store import ImageStore


def test_contained_path_refuses_every_way_out(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
    assert contained_path(root, "sub/a.png") == (root / "sub/a.png").resolve()
    for bad in ("../x.png", "sub/../../x.png", str(tmp_path / "outside/x.png"), "link/x.png", "", "a\0b"):
        with pytest.raises(UnsafePathError):
            contained_path(root, bad)


@pytest.mark.parametrize("sha", ["../" * 3 + "evil", "AB" * 32, "ab" * 31, "ab" * 33, "g" * 64, "/etc/passwd", 7])
def test_image_store_takes_only_real_hashes(sha, tmp_path):
    store = ImageStore(tmp_path / "images")
    with pytest.raises(StoreError, match="not a sha256"):
        store.path(sha)
    assert store.has(sha) is False


def test_sft_export_reader_stays_in_its_folder(tmp_path):
    from agent_grpo.train.sft_data import _messages

    (tmp_path / "export").mkdir()
    raw = [{"role": "user", "content": [{"type": "image", "image": "../secret.png"}]}]
    with pytest.raises(ValueError, match="outside"):
        _messages(raw, tmp_path / "export")


def test_dataset_image_paths_stay_in_their_folder(tmp_path):
    from agent_grpo_envs._common import image_path

    from agent_grpo.errors import AgentGrpoError

    (tmp_path / "data").mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    with pytest.raises(AgentGrpoError, match="outside"):
        image_path(tmp_path / "data", "../secret.png", "row 1")
    with pytest.raises(AgentGrpoError, match="outside"):
        image_path(tmp_path / "data", str(tmp_path / "secret.png"), "row 1")


# ---- the index is checked against the records ------------------------------------------------------


@pytest.fixture
def run(tmp_path) -> tuple[Path, list]:
    path = tmp_path / "run"
    return path, build_run(path, steps=(0, 1), n_tasks=1)


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def assert_intact(path: Path, expected) -> RunStore:
    store = RunStore.open(path)
    assert [r.id for r in store.rows] == [t.id for t in expected]
    for t in expected:
        assert comparable(store.read(t.id)) == comparable(t)
    return store


def test_a_damaged_index_line_hides_nothing(run):
    path, expected = run
    rows = lines(path / "index.jsonl")
    rows[2] = b"{not json\n"
    (path / "index.jsonl").write_bytes(b"".join(rows))
    store = assert_intact(path, expected)
    assert any("1 damaged" in p for p in store.problems())


def test_stale_offsets_never_serve_another_record(run):
    path, expected = run
    records = lines(path / "trajectories.jsonl")
    records[0], records[5] = records[5], records[0]  # the index now points at the wrong lines
    (path / "trajectories.jsonl").write_bytes(b"".join(records))
    store = RunStore.open(path)
    assert sorted(r.id for r in store.rows) == sorted(t.id for t in expected)
    for t in expected:
        assert store.read(t.id).id == t.id and comparable(store.read(t.id)) == comparable(t)


def test_same_length_stale_row_is_caught_when_read(run):
    path, expected = run
    rows = [json.loads(x) for x in lines(path / "index.jsonl")]
    rows[0]["id"], rows[1]["id"] = rows[1]["id"], rows[0]["id"]  # plausible rows, pointing at the wrong records
    rows[0]["length"], rows[1]["length"] = rows[1]["length"], rows[0]["length"]
    rows[1]["offset"] = rows[0]["offset"] + rows[0]["length"] + 1
    (path / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = RunStore.open(path)
    for t in expected:
        assert comparable(store.read(t.id)) == comparable(t)


def test_a_half_written_index_row_after_disk_full_hides_nothing(run, tiny_env, monkeypatch):
    path, expected = run
    task = tiny_env.load_tasks(n=1)[0]
    from scripted_run import run_group

    more = run_group(tiny_env, task, 5)
    store = RunStore.create(path)
    real = os.write
    calls = {"n": 0}

    def full_disk(fd, data):
        if fd == store._index_fd and calls["n"] == 0:  # the first index row: half of it, then ENOSPC
            calls["n"] += 1
            real(fd, bytes(data[: len(data) // 2]))
            raise OSError(28, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    store.extend(more)  # the records are stored; the lost index row is not a lost trajectory
    monkeypatch.setattr(os, "write", real)
    store.close()
    assert b"\n" * 2 not in (path / "index.jsonl").read_bytes()
    assert_intact(path, expected + more)
    with RunStore.create(path) as writer:  # a writer rewrites a repaired index ...
        assert len(writer) == len(expected) + len(more)
    after = RunStore.open(path)
    assert after.problems() == []  # ... so the next reader finds it whole
    assert len(lines(path / "index.jsonl")) == len(expected) + len(more)


def test_a_lost_index_is_rebuilt(run):
    path, expected = run
    (path / "index.jsonl").unlink()
    assert_intact(path, expected)
