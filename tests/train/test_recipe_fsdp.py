"""Two processes through `accelerate launch` with FSDP (FSDP2 over gloo, CPU): the sharded update
equals DDP's, and a run killed mid-step and resumed ends bit-identical to one that never stopped.

The environment gives tasks prompts of two lengths, so the processes pack different numbers of
micro-batches in some steps: FSDP's per-forward collectives only line up because the update pads
every process to the same count (agent_grpo/train/step.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainer_fixtures import HERE, register_env_plugin, subprocess_env, tiny_overrides

from agent_grpo.store import RunStore
from agent_grpo.train.metrics import read_metrics

STEPS = 3
CONFIGS = HERE.parents[1] / "examples" / "accelerate"
EXIT_AT_STEP = "FSDP_TEST_EXIT_AT_STEP"
ENV_MODULE = f'''
import os

from trainer_fixtures import TextRewardEnv


class VaryingPromptEnv(TextRewardEnv):
    """`text-reward-test` with prompts of two lengths; with {EXIT_AT_STEP}=k every process exits at
    the start of step k's rollout (0-based), as if the job were killed."""

    name = "varying-prompt-test"

    def load_tasks(self, split="train", n=None, seed=0):
        tasks = super().load_tasks(split, n, seed)
        return [t.model_copy(update={{"question": t.question + " Look closely." * (4 * (i % 2))}})
                for i, t in enumerate(tasks)]

    def on_start(self, episode):
        stop = os.environ.get("{EXIT_AT_STEP}")
        if stop is not None and episode.trajectory.group_id.startswith(f"s{{int(stop) + 1}}-"):  # ids: 1-based
            os._exit(17)
'''
# Rows of 128 or 152 tokens, 6 per process: a 450-token budget packs 3 short or 2 long rows. Two
# optimizer steps per rollout batch and a KL term add the no-grad forwards (old and reference logprobs).
OVERRIDES = (
    "env.name=varying-prompt-test",
    "rollout.tasks_per_step=4",
    "optim.micro_batch_tokens=450",
    "loss.num_iterations=2",
    "loss.beta=0.04",
)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    root = register_env_plugin(tmp_path_factory.mktemp("plugin"))
    (root / "fsdp_test_env.py").write_text(ENV_MODULE)
    dist = root / "agent_grpo_fsdp_test-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: agent-grpo-fsdp-test\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(
        "[agent_grpo.envs]\nvarying-prompt-test = fsdp_test_env:VaryingPromptEnv\n"
    )
    return root


def launch(config: str, out: Path, plugin: Path, **env: str) -> subprocess.CompletedProcess:
    """The real CLI under `accelerate launch` with a shipped config (trainer_fixtures.py writes a
    weight checksum per process at the end); GPUs hidden so the test means the same everywhere."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIGS / config),
        str(HERE / "trainer_fixtures.py"),
        "train",
        "--no-progress",
        *(f"--set={o}" for o in tiny_overrides(out, STEPS, *OVERRIDES)),
    ]
    return subprocess.run(
        command,
        env=subprocess_env(plugin, CUDA_VISIBLE_DEVICES="", **env),
        capture_output=True,
        text=True,
        timeout=400,
    )


def succeeded(done: subprocess.CompletedProcess) -> bool:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return True


def final_checkpoint(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    ckpt = out / "checkpoints" / f"step_{STEPS:06d}"
    return load_file(str(ckpt / "model" / "model.safetensors")), load_file(
        str(ckpt / "optimizer.safetensors")
    )


def train_rows(out: Path) -> list[dict]:
    return [r for r in read_metrics(out / "metrics.jsonl") if "reward" in r]


@pytest.fixture(scope="module")
def fsdp_run(plugin, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp") / "run"
    assert succeeded(launch("fsdp_cpu.yaml", out, plugin))
    return out


@pytest.mark.slow
def test_fsdp_trains_like_ddp(fsdp_run, plugin, tmp_path):
    ddp = tmp_path / "ddp"
    assert succeeded(launch("ddp_cpu.yaml", ddp, plugin))
    ranks = [(fsdp_run / f"params.rank{r}.txt").read_text() for r in range(2)]
    assert ranks[0] == ranks[1]  # every process's generation copy holds the same full weights

    rows, ddp_rows = train_rows(fsdp_run), train_rows(ddp)
    assert [r["step"] for r in rows] == [1, 2, 3]
    # A mean of 2 processes' counts that is not whole: they ran different numbers of micro-batches.
    assert any(r["micro_batches"] % 1 for r in rows), [r["micro_batches"] for r in rows]
    for a, b in zip(rows, ddp_rows, strict=True):
        assert a["reward"] == b["reward"] and a["micro_batches"] == b["micro_batches"]  # same samples
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4) and a["grad_norm"] > 0
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
    ids = [r.id for r in RunStore.open(fsdp_run / "trajectories").rows]
    assert ids == [r.id for r in RunStore.open(ddp / "trajectories").rows]

    (model, optim), (ddp_model, ddp_optim) = final_checkpoint(fsdp_run), final_checkpoint(ddp)
    assert model.keys() == ddp_model.keys() and optim.keys() == ddp_optim.keys()
    # Same update up to float rounding (reduce-scatter vs all-reduce, sharded vs whole grad norm).
    for k in model:
        torch.testing.assert_close(model[k], ddp_model[k], rtol=0, atol=1e-5, msg=k)
    for k in optim:
        if not k.startswith("rng."):
            torch.testing.assert_close(optim[k], ddp_optim[k], rtol=1e-4, atol=1e-7, msg=k)


@pytest.mark.slow
def test_fsdp_killed_mid_step_3_resumes_bit_identical(fsdp_run, plugin, tmp_path):
    out = tmp_path / "run"
    killed = launch("fsdp_cpu.yaml", out, plugin, **{EXIT_AT_STEP: "2"})
    assert killed.returncode != 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000001", "step_000002"]

    resumed = launch("fsdp_cpu.yaml", out, plugin)
    assert succeeded(resumed) and "resumed from" in resumed.stdout
    (model, optim), (want_model, want_optim) = final_checkpoint(out), final_checkpoint(fsdp_run)
    assert model.keys() == want_model.keys() and optim.keys() == want_optim.keys()
    assert [k for k in want_model if not torch.equal(model[k], want_model[k])] == []
    assert [k for k in want_optim if not torch.equal(optim[k], want_optim[k])] == []  # Adam moments, RNG
    for a, b in zip(train_rows(out), train_rows(fsdp_run), strict=True):
        assert (a["step"], a["reward"], a["loss"], a["grad_norm"], a["lr"]) == (
            b["step"],
            b["reward"],
            b["loss"],
            b["grad_norm"],
            b["lr"],
        )
    ids = [r.id for r in RunStore.open(out / "trajectories").rows]
    assert ids == [r.id for r in RunStore.open(fsdp_run / "trajectories").rows]
    state = json.loads((out / "checkpoints" / f"step_{STEPS:06d}" / "trainer_state.json").read_text())
    assert state["data_position"] == STEPS * 4
