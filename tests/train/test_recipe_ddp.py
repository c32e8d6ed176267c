"""Two processes through `accelerate launch` (DDP over gloo, CPU): each rolls out its share of the
tasks, gradients are averaged, the weights stay identical, and only the main process writes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from trainer_fixtures import HERE, register_env_plugin, subprocess_env, tiny_overrides

from agent_grpo.store import RunStore
from agent_grpo.train.metrics import read_metrics

STEPS = 2
DDP_CPU = HERE.parents[1] / "examples" / "accelerate" / "ddp_cpu.yaml"


@pytest.mark.slow
def test_two_process_cpu_run(tmp_path):
    accelerate = [sys.executable, "-m", "accelerate.commands.launch"]
    out = tmp_path / "run"
    plugin = register_env_plugin(tmp_path / "plugin")
    # The real CLI (trainer_fixtures.py runs `agent-grpo` with a per-process weight checksum at the end),
    # launched with the shipped config file; hide any GPU so the test means the same everywhere.
    command = [*accelerate, "--config_file", str(DDP_CPU), str(HERE / "trainer_fixtures.py"), "train", "--no-progress",
               *(f"--set={o}" for o in tiny_overrides(out, STEPS, "rollout.tasks_per_step=4"))]
    done = subprocess.run(command, env=subprocess_env(plugin, CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

    ranks = [(out / f"params.rank{r}.txt").read_text() for r in range(2)]  # both processes finished
    assert ranks[0] == ranks[1]  # bit-identical weights on both ranks after the updates

    rows = [r for r in read_metrics(out / "metrics.jsonl") if "reward" in r]
    assert [r["step"] for r in rows] == [1, 2]  # one row per step: only the main process logs
    assert all(r["grad_norm"] > 0 for r in rows)
    ids = [r.id for r in RunStore.open(out / "trajectories").rows]
    assert len(ids) == len(set(ids)) == STEPS * 4 * 3  # both processes' trajectories, gathered, stored once
    per_step = {s: {i.split("-", 1)[1].rsplit("-", 1)[0] for i in ids if i.startswith(f"s{s}-")} for s in range(1, STEPS + 1)}
    assert all(len(tasks) == 4 for tasks in per_step.values())  # the processes rolled out different tasks
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000001", "step_000002"]
    state = json.loads((out / "checkpoints" / "step_000002" / "trainer_state.json").read_text())
    assert state["data_position"] == STEPS * 4
