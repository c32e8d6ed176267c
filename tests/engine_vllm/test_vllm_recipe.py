"""A short GRPO run with `rollout.engine: vllm` through the CLI: batch checks, gap metrics, resume after a stop."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

spec = importlib.util.find_spec("vllm")
if spec is None or spec.origin is None:
    pytest.skip("vLLM is not installed (bash scripts/setup_vllm.sh)", allow_module_level=True)

from agent_grpo.models.chat import ChatFormat  # noqa: E402
from agent_grpo.models.loading import load_processor  # noqa: E402
from agent_grpo.store import RunStore  # noqa: E402

SETTINGS = [
    "env.name=visual-search", "env.num_eval_tasks=2", "rollout.tasks_per_step=2", "rollout.group_size=2",
    "rollout.max_total_tokens=1024", "rollout.sampling.max_new_tokens=24", "loss.mask_truncated=false",
    "optim.lr=0.001", "tensorboard=false", "save_every=1", "rollout.engine=vllm", "model.freeze_vision=false",
]


def train(out: Path, steps: int) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "agent_grpo.cli.main", "train", "--no-progress", "--set", f"out_dir={out}",
            "--set", f"steps={steps}"]
    for s in SETTINGS:
        args += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=1200, check=False)


@pytest.mark.slow
def test_grpo_with_vllm_passes_batch_checks_and_resumes(tmp_path):
    out = tmp_path / "run"
    first = train(out, 1)  # stops after the step-1 checkpoint, as a killed run would have left it
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    second = train(out, 2)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resumed from" in second.stdout and "(step 1)" in second.stdout

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "reward" in r]
    assert [r["step"] for r in train_rows] == [1, 2]
    for r in train_rows:  # the train/inference gap is logged every step: float32 noise, images included
        assert 0.0 <= r["gap/mean_abs"] <= r["gap/max_abs"] < 1e-3 and r["gap/kl"] >= 0.0, r
    # (It was ~0.07 mean |diff| while vLLM normalised these images with random mean/std buffers.)

    chat = ChatFormat(load_processor(out / "checkpoints" / "step_000002" / "model"))
    store = RunStore.open(out / "trajectories")
    trajs = list(store)
    assert len(trajs) == 2 * 2 * 2
    for t in trajs:  # token-exact: segments are the context; one placeholder run per image
        ids = [i for s in t.segments for i in s.token_ids]
        assert ids.count(chat.tokenizer.convert_tokens_to_ids("<|vision_start|>")) == len(t.images)
        for s in t.segments:
            if s.kind == "sampled":
                assert len(s.logprobs) == len(s.token_ids)
