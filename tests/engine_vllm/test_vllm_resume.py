"""GRPO with `rollout.engine: vllm`, stopped mid-run and resumed, ends equal to a run that never stopped.

Two ways to stop in step 2 of 2 (after the step-1 checkpoint), each followed by the same command again:
- the engine fails: vLLM itself raises during the rollout (`vllm_fault_fixtures.py`): the run ends with
  a one-line message (exit status 2), nothing stored is lost or torn;
- the process is killed with SIGKILL while the rollout runs (the in-process engine core dies with it).
Each run starts its own engine (~30-60 s on a busy 2-core CPU), hence one small module.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

spec = importlib.util.find_spec("vllm")
if spec is None or spec.origin is None:
    pytest.skip("vLLM is not installed (bash scripts/setup_vllm.sh)", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from safetensors.torch import load_file  # noqa: E402
from trainer_fixtures import PAUSE_AT_STEP, PAUSE_MARKER, register_env_plugin, subprocess_env, tiny_overrides  # noqa: E402
from vllm_fault_fixtures import FAULT_AT_STEP, FAULT_MESSAGE  # noqa: E402

from agent_grpo.store import RunStore  # noqa: E402
from agent_grpo.train.checkpoint import latest_checkpoint  # noqa: E402
from agent_grpo.train.metrics import read_metrics  # noqa: E402

pytestmark = pytest.mark.slow
STEPS = 2
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    return register_env_plugin(tmp_path_factory.mktemp("plugin"))


def command(out: Path) -> list[str]:
    settings = tiny_overrides(out, STEPS, "rollout.engine=vllm", "rollout.group_size=2", "model.freeze_vision=false")
    return [sys.executable, str(HERE / "vllm_fault_fixtures.py"), "train", "--no-progress",
            *(f"--set={s}" for s in settings)]


def env(plugin: Path, **extra: str) -> dict[str, str]:
    e = subprocess_env(plugin, **extra)
    e["PYTHONPATH"] = os.pathsep.join([str(HERE), e["PYTHONPATH"]])
    return e


def run(out: Path, plugin: Path, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(out), env=env(plugin, **extra), capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def uninterrupted(plugin, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    done = run(out, plugin)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def checkpoint_tensors(out: Path) -> dict[str, torch.Tensor]:
    ckpt = out / "checkpoints" / f"step_{STEPS:06d}"
    return {**load_file(str(ckpt / "model" / "model.safetensors")), **load_file(str(ckpt / "optimizer.safetensors"))}


def assert_same_run(out: Path, reference: Path) -> None:
    mine, ref = checkpoint_tensors(out), checkpoint_tensors(reference)
    assert mine.keys() == ref.keys()
    assert [k for k in ref if not torch.equal(mine[k], ref[k])] == []  # weights (vision tower too), Adam, RNG
    rows = lambda d: [r for r in read_metrics(d / "metrics.jsonl") if "reward" in r]  # noqa: E731
    assert [r["step"] for r in rows(out)] == list(range(1, STEPS + 1))
    for a, b in zip(rows(out), rows(reference), strict=True):
        assert (a["reward"], a["loss"], a["grad_norm"], a["gap/mean_abs"]) == \
               (b["reward"], b["loss"], b["grad_norm"], b["gap/mean_abs"])
    got, want = list(RunStore.open(out / "trajectories")), list(RunStore.open(reference / "trajectories"))
    assert [t.id for t in got] == [t.id for t in want] and len({t.id for t in got}) == STEPS * 2 * 2
    for a, b in zip(got, want, strict=True):  # the same samples, token for token, with the same logprobs
        assert [s.token_ids for s in a.segments] == [s.token_ids for s in b.segments]
        assert [s.logprobs for s in a.segments] == [s.logprobs for s in b.segments]


def test_engine_failure_stops_the_run_with_a_message_keeps_what_is_stored_and_resume_works(
        uninterrupted, plugin, tmp_path):
    out = tmp_path / "run"
    failed = run(out, plugin, **{FAULT_AT_STEP: "2"})
    assert failed.returncode == 2, failed.stdout[-3000:] + failed.stderr[-3000:]
    # One line says what failed and what to do. (vLLM may log its own shutdown after it, at exit.)
    messages = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert len(messages) == 1, failed.stderr[-3000:]
    assert messages[0].startswith("error: the vLLM engine failed during generate") and FAULT_MESSAGE in messages[0]
    assert "Run the same command again to resume" in messages[0]
    # What step 1 stored is whole: its checkpoint, its 4 trajectories, its metrics row; nothing of step 2.
    assert latest_checkpoint(out).name == "step_000001"
    assert not list((out / "checkpoints").glob(".tmp_*"))
    assert [t.id.split("-")[0] for t in RunStore.open(out / "trajectories")] == ["s1"] * 4
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "reward" in r] == [1]

    resumed = run(out, plugin)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "step_000001" in resumed.stdout
    assert_same_run(out, uninterrupted)


def test_sigkill_mid_rollout_then_resume_ends_equal_to_an_uninterrupted_run(uninterrupted, plugin, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "paused"
    # The environment blocks in step 2's rollout (0-based 1) after writing the marker; then the kill.
    proc = subprocess.Popen(command(out), env=env(plugin, **{PAUSE_AT_STEP: "1", PAUSE_MARKER: str(marker)}),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 900
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), proc.communicate(timeout=5)[0].decode()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert latest_checkpoint(out).name == "step_000001"

    resumed = run(out, plugin)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "step_000001" in resumed.stdout
    assert_same_run(out, uninterrupted)
