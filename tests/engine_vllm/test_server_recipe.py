"""GRPO with `rollout.engine: vllm-server`: the server process dies in the middle of a step.

The run stops with a clear message after its configured retries, nothing of the unfinished step is
stored, the checkpoint of the finished step is intact, and after the server is started again the same
config resumes and ends bit-identical to a run whose server never died.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

spec = importlib.util.find_spec("vllm")
if spec is None or spec.origin is None:
    pytest.skip("vLLM is not installed (bash scripts/setup_vllm.sh)", allow_module_level=True)

from server_fixtures import ServerProcess  # noqa: E402

from agent_grpo.recipes.grpo import GRPORecipe  # noqa: E402
from agent_grpo.rollout.server_engine import EngineServerError  # noqa: E402
from agent_grpo.store import RunStore  # noqa: E402
from agent_grpo.train.checkpoint import latest_checkpoint, resume_checkpoint  # noqa: E402
from agent_grpo.train.config import load_config  # noqa: E402
from agent_grpo.train.metrics import read_metrics  # noqa: E402

torch.set_num_threads(1)
STEPS = 2
SETTINGS = [
    "env.name=visual-search", "env.num_eval_tasks=2", "rollout.tasks_per_step=2", "rollout.group_size=2",
    "rollout.max_total_tokens=1024", "rollout.sampling.max_new_tokens=16", "loss.mask_truncated=false",
    "optim.lr=0.001", "tensorboard=false", "save_every=1", "model.freeze_vision=false",
    "rollout.engine=vllm-server", "rollout.server.retry_wait_s=0.2",
]


def config(out, url, *more):
    return load_config(None, [f"out_dir={out}", f"steps={STEPS}", *SETTINGS, f"rollout.server.url={url}", *more])


def run(cfg) -> GRPORecipe:
    recipe = GRPORecipe(cfg, progress=False)
    recipe.setup()
    try:
        recipe.train()
    finally:
        recipe.cleanup()
    return recipe


def stored(out) -> list:
    return list(RunStore.open(out / "trajectories"))


@pytest.mark.slow
def test_the_server_dies_mid_step_the_run_stops_cleanly_and_resumes_as_if_it_never_had(tmp_path):
    server = ServerProcess([], tmp_path / "server.log")
    restarted = None
    try:
        reference = run(config(tmp_path / "straight", server.url))
        ref_params = {k: v.detach().clone() for k, v in reference.policy.state_dict().items()}

        cfg = config(tmp_path / "run", server.url, "rollout.server.retries=1")
        recipe = GRPORecipe(cfg, progress=False)
        recipe.setup()
        rollout_step = recipe.rollout_step

        def server_dies_in_step_2(step):
            if step == 2:  # step 1 is trained, pushed, stored and checkpointed
                server.kill()
            return rollout_step(step)

        recipe.rollout_step = server_dies_in_step_2
        with pytest.raises(EngineServerError) as err:
            recipe.train()
        recipe.cleanup()
        msg = str(err.value)
        assert "failed the generate call 2 time(s)" in msg and "rollout.server.retries=1" in msg
        assert "nothing of the unfinished step is stored" in msg and "resume" in msg

        out = tmp_path / "run"  # nothing lost, nothing torn: step 1 whole, nothing of step 2
        assert latest_checkpoint(out).name == "step_000001"
        assert resume_checkpoint(out, clean=False)[1] == []  # no incomplete checkpoint to skip
        assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "reward" in r] == [1]
        step1 = [t for t in stored(tmp_path / "straight") if t.step == 1]
        assert [t.id for t in stored(out)] == [t.id for t in step1]
        for a, b in zip(stored(out), step1, strict=True):
            assert [s.token_ids for s in a.segments] == [s.token_ids for s in b.segments]

        restarted = ServerProcess([], tmp_path / "server2.log", port=server.port)  # the same address, new weights
        resumed = run(cfg)
        assert resumed.step == STEPS
        params = resumed.policy.state_dict()
        assert [k for k in ref_params if not torch.equal(params[k], ref_params[k])] == []
        mine, ref = stored(out), stored(tmp_path / "straight")
        assert [t.id for t in mine] == [t.id for t in ref]
        for a, b in zip(mine, ref, strict=True):
            assert [(s.token_ids, s.logprobs) for s in a.segments] == [(s.token_ids, s.logprobs) for s in b.segments]
    finally:
        server.stop()
        if restarted is not None:
            restarted.stop()
