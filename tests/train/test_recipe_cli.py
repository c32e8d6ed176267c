"""`agent-grpo train`: end to end on the tiny model and visual-search, and config errors before any model loads."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from transformers import Qwen2_5_VLForConditionalGeneration
from typer.testing import CliRunner

from agent_grpo.cli.main import app
from agent_grpo.errors import ConfigError
from agent_grpo.recipes.grpo import check_processes
from agent_grpo.store import RunStore
from agent_grpo.train.config import load_config
from agent_grpo.train.metrics import read_metrics

torch.set_num_threads(1)


def test_train_runs_end_to_end_on_visual_search(tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "tiny.yaml"
    config.write_text(
        f"out_dir: {out}\nsteps: 2\nenv: {{name: visual-search, num_eval_tasks: 2}}\n"
        "rollout: {tasks_per_step: 2, group_size: 2, max_total_tokens: 512, sampling: {max_new_tokens: 24}}\n"
    )
    result = CliRunner().invoke(app, ["train", str(config)], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    # Not a terminal: one log line per step, not a bar drawn only at the end.
    assert "GRPO step 1/2 | reward" in result.output and "GRPO step 2/2 | reward" in result.output
    assert f"done: metrics in {out / 'metrics.jsonl'}" in "".join(result.output.split("\n"))

    rows = read_metrics(out / "metrics.jsonl")
    train_rows, eval_rows = [r for r in rows if "reward" in r], [r for r in rows if "eval/reward" in r]
    assert [r["step"] for r in train_rows] == [1, 2] and [r["step"] for r in eval_rows] == [2]
    for key in ("loss", "grad_norm", "lr", "tool_calls_per_traj", "time/rollout_s", "entropy", "reward/accuracy"):
        assert key in train_rows[0]
    assert any((out / "tensorboard").iterdir())

    [ckpt] = sorted((out / "checkpoints").iterdir())  # save_every defaults past steps: saved at the end
    assert ckpt.name == "step_000002" and {"model", "optimizer.safetensors", "trainer_state.json"} <= {
        p.name for p in ckpt.iterdir()}
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt / "model")
    assert model.config.model_type == "qwen2_5_vl"
    assert (ckpt / "model" / "tokenizer.json").exists() and (ckpt / "model" / "chat_template.jinja").exists()

    store = RunStore.open(out / "trajectories")
    assert len(store) == 2 * 2 * 2  # steps x tasks x G
    assert store.meta.env == "visual-search"
    assert sorted({r.step for r in store.rows}) == [1, 2]  # the steps of metrics.jsonl and checkpoints
    traj = store.read(store.rows[0].id, images=True)
    assert traj.segments and traj.images[0].has_pixels and traj.step == 1  # steps count from 1 everywhere


BAD = {
    "unknown key": ("rollout:\n  group_sise: 4\n", ["rollout.group_sise", "did you mean rollout.group_size"]),
    "group size 1": ("rollout:\n  group_size: 1\n", ["rollout.group_size", "got 1", "GRPO needs at least 2"]),
    "turn longer than context": (
        "rollout:\n  max_total_tokens: 256\n  sampling: {max_new_tokens: 256}\n",
        ["rollout.sampling.max_new_tokens (256) must be below rollout.max_total_tokens (256)",
         "raise rollout.max_total_tokens or lower rollout.sampling.max_new_tokens"],
    ),
    "unknown sampling key": ("rollout:\n  sampling: {max_new_token: 8}\n", ["did you mean rollout.sampling.max_new_tokens"]),
    "bad yaml": ("rollout: [\n", ["is not valid YAML", "line 2"]),
    "not a mapping": ("- 1\n- 2\n", ["must hold a mapping of settings"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_config_errors_name_the_field_and_the_fix_before_any_model_loads(case, tmp_path, monkeypatch):
    import agent_grpo.train.policy as policy

    monkeypatch.setattr(policy, "build_policy", lambda *a, **k: pytest.fail("a model was loaded"))
    text, expected = BAD[case]
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    result = CliRunner().invoke(app, ["train", str(config)], env={"COLUMNS": "400"})
    assert result.exit_code == 2
    output = " ".join(result.output.split())  # the console wraps long lines
    for piece in expected:
        assert piece in output, result.output


def test_a_missing_config_file_is_named(tmp_path):
    result = CliRunner().invoke(app, ["train", str(tmp_path / "nope.yaml")], env={"COLUMNS": "400"})
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and "nope.yaml does not exist" in output and "examples/configs" in output


def test_tasks_per_step_must_split_over_the_processes():
    cfg = load_config(None, ["rollout.tasks_per_step=4"])
    accelerator = SimpleNamespace(distributed_type=DistributedType.MULTI_GPU, num_processes=3)
    with pytest.raises(ConfigError, match="tasks_per_step=4 does not split over 3 processes.*multiple of 3"):
        check_processes(cfg, accelerator)
    check_processes(cfg, SimpleNamespace(distributed_type=DistributedType.MULTI_GPU, num_processes=2))


def test_deepspeed_is_refused_with_the_fsdp_equivalents(monkeypatch):
    fix = "does not support DeepSpeed.*Launch with FSDP.*ZeRO-3 equivalent"
    with pytest.raises(ConfigError, match=fix):
        check_processes(load_config(), SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, num_processes=2))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # on CPU accelerate reports it as MULTI_CPU
    with pytest.raises(ConfigError, match=fix):
        check_processes(load_config(), SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, num_processes=2))


def fsdp_launch(mixed_precision: str = "no", **settings) -> SimpleNamespace:
    plugin = FullyShardedDataParallelPlugin(**{"fsdp_version": 2, **settings})
    return SimpleNamespace(distributed_type=DistributedType.FSDP, num_processes=2, mixed_precision=mixed_precision,
                           state=SimpleNamespace(fsdp_plugin=plugin))


FSDP_REFUSED = {
    "fsdp1": ({"fsdp_version": 1}, "fsdp_version: 2"),
    "mixed precision": ({"mixed_precision": "bf16"}, "mixed_precision: 'no' (set the dtype with model.dtype"),
    "rank-0 loading": ({"cpu_ram_efficient_loading": True}, "fsdp_cpu_ram_efficient_loading: false"),
    "offload": ({"cpu_offload": True}, "fsdp_offload_params: false"),
    "fsdp checkpointing": ({"activation_checkpointing": True}, "use model.gradient_checkpointing: true"),
    "size-based wrap": ({"auto_wrap_policy": "size_based_wrap"}, "fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP"),
}


@pytest.mark.parametrize("case", list(FSDP_REFUSED))
def test_fsdp_settings_the_recipe_does_not_implement_are_refused(case, monkeypatch):
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")  # the plugin writes it; restored after
    settings, fix = FSDP_REFUSED[case]
    with pytest.raises(ConfigError, match=re.escape(fix)):
        check_processes(load_config(), fsdp_launch(**settings))


def test_fsdp2_is_accepted_also_when_accelerate_reports_a_cpu_launch_as_multi_cpu(monkeypatch):
    check_processes(load_config(), fsdp_launch())
    check_processes(load_config(), fsdp_launch(reshard_after_forward=False))  # the ZeRO-2 equivalent
    # `accelerate launch` exports the config; on CPU the Accelerator says MULTI_CPU and keeps no plugin.
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    cpu = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, num_processes=2, mixed_precision="no")
    with pytest.raises(ConfigError, match="fsdp_version: 2"):
        check_processes(load_config(), cpu)
    monkeypatch.setenv("FSDP_VERSION", "2")
    check_processes(load_config(), cpu)


GRPO_CONFIGS = sorted(p for p in (Path(__file__).parents[2] / "examples" / "configs").glob("*.yaml") if not p.name.startswith("sft_"))


@pytest.mark.parametrize("path", GRPO_CONFIGS, ids=str)
def test_example_configs_are_valid_and_say_how_to_run_them(path):
    assert path.read_text().startswith(("# agent-grpo train examples/configs/", "# accelerate launch"))
    load_config(path)
