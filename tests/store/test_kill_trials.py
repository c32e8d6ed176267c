"""Many kills of a writer (SIGKILL) mid-append, mid-index-row, mid-checkpoint and at random moments:
after each, every acknowledged trajectory is stored intact, the newest acknowledged checkpoint (or a
newer complete one) is what resume picks and it loads, and at the end every replay command works.

Each trial forks a writer from this process (so it starts in milliseconds) that first reopens the
run as a restarted trainer would (recovering from the previous kill), then appends groups and saves
a checkpoint after each, reporting over a pipe what it has *acknowledged* (append/save returned).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import random
import time
from pathlib import Path

import pytest
import torch
from scripted_run import TinyEnv, comparable, run_group, tz_note, tz_zoom
from transformers.utils import logging as _hf_logging  # noqa: F401  save_checkpoint imports it: once, here, not per writer
from typer.testing import CliRunner

from agent_grpo.store import RunMeta, RunStore
from agent_grpo.train import checkpoint as ck

TRIALS = 24
MODES = ("append", "index", "ckpt-file", "ckpt-rename", "random", "random", "random", "random")


def digest(traj) -> str:
    return hashlib.sha256(json.dumps(comparable(traj), sort_keys=True).encode()).hexdigest()


class TinyModel:
    def __init__(self, seed: int):
        torch.manual_seed(seed)
        self.lin = torch.nn.Linear(4, 3)

    def save_pretrained(self, path, safe_serialization=True):
        from safetensors.torch import save_file

        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "config.json").write_text("{}")
        save_file({k: v.contiguous() for k, v in self.lin.state_dict().items()}, str(Path(path) / "model.safetensors"))


def _block(conn, where: str) -> None:
    conn.send(("blocked", where))
    time.sleep(60)  # killed here


def groups() -> list[list]:
    """Two scored groups (made once, in the parent: the writers only append renamed copies)."""
    env = TinyEnv()
    task = env.load_tasks(n=1)[0]
    made = [run_group(env, task, s) for s in (0, 1)]
    env.shutdown()
    return made


def group_at(base: list[list], step: int) -> list:
    out = []
    for t in base[step % 2]:
        group_id = f"s{step}-{t.task.id}"
        out.append(t.model_copy(update={"id": f"{group_id}-{t.sample_index}", "group_id": group_id, "step": step}))
    return out


def writer(run: Path, out: Path, first_step: int, mode: str, arm_after: int, base: list[list], conn) -> None:
    """The child: append groups and checkpoint after each, until killed; acknowledge each on `conn`."""
    store = RunStore.create(run, meta=RunMeta(env="tiny"))
    real_write, real_save, real_rename = os.write, ck.save_file, Path.rename
    count = {"n": 0}

    def write(fd, data):
        target = store._fd if mode == "append" else store._index_fd
        if fd == target and mode in ("append", "index"):
            count["n"] += 1
            if count["n"] > arm_after:
                real_write(fd, bytes(data[: max(1, len(data) // 2)]))
                _block(conn, mode)
        return real_write(fd, data)

    def save_file(tensors, path, *a, **k):
        real_save(tensors, path, *a, **k)
        count["n"] += 1
        if mode == "ckpt-file" and count["n"] > arm_after:
            os.truncate(path, os.path.getsize(path) // 2)
            _block(conn, mode)

    def rename(self, target):
        if mode == "ckpt-rename" and self.name.startswith(".tmp_step_"):
            count["n"] += 1
            if count["n"] > arm_after:
                _block(conn, mode)
        return real_rename(self, target)

    os.write = write
    ck.save_file = save_file
    Path.rename = rename
    conn.send(("ready", None))
    step = first_step
    while True:
        for traj in group_at(base, step):
            store.append(traj)
            conn.send(("ack", (traj.id, digest(traj))))
        model = TinyModel(step)
        opt = torch.optim.AdamW(model.lin.parameters(), lr=0.1)
        model.lin(torch.ones(1, 4)).sum().backward()
        opt.step()
        ck.save_checkpoint(out, step + 1, model, None, opt, None, extra={"data_position": step}, keep=2)
        conn.send(("ckpt", step + 1))
        step += 1


def trial(run: Path, out: Path, k: int, rng: random.Random, acked: dict, ckpts: list, base: list[list]) -> str:
    mode = MODES[k % len(MODES)]
    parent, child = mp.get_context("fork").Pipe()
    proc = mp.get_context("fork").Process(
        target=writer, args=(run, out, 1000 * k, mode, rng.randint(0, 6), base, child), daemon=True)
    proc.start()
    deadline = time.monotonic() + (rng.uniform(0.05, 0.6) if mode == "random" else 20)
    blocked = None
    try:
        while time.monotonic() < deadline and blocked is None:
            if not parent.poll(0.01):
                continue
            kind, value = parent.recv()
            if kind == "ack":
                acked[value[0]] = value[1]
            elif kind == "ckpt":
                ckpts.append(value)
            elif kind == "blocked":
                blocked = value
    finally:
        proc.kill()
        proc.join(10)
    while parent.poll():  # acknowledgements sent just before the kill
        kind, value = parent.recv()
        if kind == "ack":
            acked[value[0]] = value[1]
        elif kind == "ckpt":
            ckpts.append(value)
    assert mode == "random" or blocked == mode, f"trial {k}: the writer never reached its kill point ({mode})"
    return mode


@pytest.mark.slow
def test_kills_lose_nothing_acknowledged(tmp_path, monkeypatch):
    run, out = tmp_path / "run", tmp_path / "train"
    rng = random.Random(15)
    acked: dict[str, str] = {}
    ckpts: list[int] = []
    base = groups()
    model = TinyModel(0)  # one save here first, so the forked writers inherit every lazy import it makes
    ck.save_checkpoint(tmp_path / "warm", 1, model, None, torch.optim.AdamW(model.lin.parameters()), None, extra={})
    start = time.monotonic()
    for k in range(TRIALS):
        mode = trial(run, out, k, rng, acked, ckpts, base)
        store = RunStore.open(run)
        assert store.corrupt == [], (k, mode, store.corrupt)
        stored = {r.id for r in store.rows}
        assert len(stored) == len(store.rows)  # no id twice
        lost = [i for i in acked if i not in stored]
        assert not lost, f"trial {k} ({mode}): acknowledged trajectories lost: {lost[:5]}"
        for traj_id in rng.sample(sorted(acked), min(8, len(acked))):
            assert digest(store.read(traj_id)) == acked[traj_id], (k, mode, traj_id)
        newest = ck.latest_checkpoint(out)
        if ckpts:
            assert newest is not None and ck.checkpoint_step(newest) >= max(ckpts), (k, mode, newest, max(ckpts))
            state = ck.load_training_state(newest, torch.optim.AdamW(TinyModel(0).lin.parameters()), None)
            assert state["step"] == ck.checkpoint_step(newest)
    elapsed = time.monotonic() - start
    assert len(acked) > 4 * TRIALS // 2 and len(ckpts) > TRIALS // 4, (len(acked), len(ckpts))

    # A last writer recovers the run; then every replay command works on it.
    with RunStore.create(run) as store:
        assert store.corrupt == [] and all(i in store for i in acked)
    from agent_grpo.cli import replay as cli
    from agent_grpo.tools.registry import ToolRegistry

    monkeypatch.setattr("agent_grpo.replay.rescore.make_env", lambda name: TinyEnv())
    monkeypatch.setattr(cli, "load_tools", lambda: ToolRegistry([tz_zoom, tz_note]))
    first = RunStore.open(run).rows[0]
    steps = sorted({r.step for r in RunStore.open(run).rows})
    for args in (["list", run], ["show", run, first.id], ["html", run, "--out", tmp_path / "r.html", "--step", str(steps[-1])],
                 ["rescore", run, "--step", str(steps[-1])], ["rerun", run, "--step", str(steps[0])],
                 ["export", run, tmp_path / "sft", "--no-hf", "--strict"], ["diff", run, str(steps[0]), str(steps[-1])]):
        res = CliRunner().invoke(cli.replay_app, [str(a) for a in args], env={"COLUMNS": "200"})
        assert res.exit_code == 0, (args[0], res.output[-2000:])
    assert "identical" in CliRunner().invoke(cli.replay_app, ["rerun", str(run), "--step", str(steps[0])]).output
    print(f"{TRIALS} kill trials, {len(acked)} acknowledged trajectories, {len(ckpts)} checkpoints, {elapsed:.1f} s")
