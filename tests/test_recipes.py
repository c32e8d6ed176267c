"""The recipes in examples/ (DeepEyes 7B, DeepEyes 3B LoRA, VLM-R1 REC 3B): their configs validate as written,
and each runs as a CPU smoke test from the very same file with one override (`--set preset=smoke`)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from agent_grpo.cli.main import app
from agent_grpo.errors import ConfigError
from agent_grpo.store import RunStore
from agent_grpo.train.config import load_config
from agent_grpo.train.metrics import read_metrics

torch.set_num_threads(1)
EXAMPLES = Path(__file__).parents[1] / "examples"
RECIPES = ["deepeyes-7b", "deepeyes-3b-lora", "vlmr1-rec-3b"]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_config_says_how_to_run_it_and_validates(name):
    path = EXAMPLES / name / "config.yaml"
    text = path.read_text()
    assert text.startswith(("# agent-grpo train examples/", "# accelerate launch")) and f"examples/{name}/config.yaml" in text
    assert f"agent-grpo train examples/{name}/config.yaml --set preset=smoke" in text
    readme = (EXAMPLES / name / "README.md").read_text()
    assert "estimate" in readme.lower() and "per step" in readme and "--set preset=smoke" in readme
    cfg = load_config(path)
    assert cfg.model.path.startswith("Qwen/Qwen2.5-VL-") and cfg.rollout.engine == "vllm"
    smoke = load_config(path, ["preset=smoke"])
    assert smoke.model.path == "tiny" and smoke.steps == 1 and smoke.rollout.engine == "hf"
    assert smoke.env.name == cfg.env.name and smoke.loss == cfg.loss  # the same task, reward and objective


def test_recipe_numbers_follow_the_papers():
    from agent_grpo.envs.registry import make_env

    de7 = load_config(EXAMPLES / "deepeyes-7b" / "config.yaml")
    assert (de7.rollout.group_size, de7.optim.lr, de7.loss.beta) == (16, 1e-6, 0.0)
    lora = load_config(EXAMPLES / "deepeyes-3b-lora" / "config.yaml")
    assert lora.model.lora and lora.rollout.group_size == 16 and "3B" in lora.model.path
    env = make_env("deepeyes", allow_tools=False, **{**de7.env.options, "data": None})
    assert env.budget.max_turns == 6 and env.rubric.weights == {"accuracy": 0.8, "format": 0.2, "tool_bonus": 1.2}
    rec = load_config(EXAMPLES / "vlmr1-rec-3b" / "config.yaml")
    assert (rec.rollout.group_size, rec.loss.beta, rec.env.name) == (8, 0.04, "refcoco")
    env = make_env("refcoco", **{**rec.env.options, "data": None, "image_root": None})
    assert env.budget.max_turns == 1 and env.tool_names == () and env.rubric.weights == {"accuracy": 1.0, "format": 1.0}


def test_preset_errors_and_precedence(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("steps: 5\npresets:\n  quick: {steps: 1, rollout.group_size: 2}\n")
    assert load_config(config).steps == 5  # presets apply only when chosen
    assert load_config(config, ["preset=quick"]).rollout.group_size == 2
    assert load_config(config, ["preset=quick", "steps=3"]).steps == 3  # an explicit --set beats the preset
    assert load_config(config, ["steps=3", "preset=quick"]).steps == 3
    with pytest.raises(ConfigError, match=r"preset: 'slow' is not defined in this config's presets \(it has: quick\)"):
        load_config(config, ["preset=slow"])
    config.write_text("presets:\n  bad: 3\n")
    with pytest.raises(ConfigError, match="presets: must map each preset name"):
        load_config(config)
    config.write_text("steps: 2\npresets:\n  bad: {steps.x: 1}\n")
    with pytest.raises(ConfigError, match="presets.bad: steps is a value, not a section"):
        load_config(config, ["preset=bad"])


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_smoke_runs_on_cpu(name, tmp_path, monkeypatch):
    """`agent-grpo train examples/NAME/config.yaml --set preset=smoke`, exactly as the README says."""
    monkeypatch.chdir(tmp_path)  # the preset's relative out_dir lands here
    result = CliRunner().invoke(app, ["train", str(EXAMPLES / name / "config.yaml"), "--set", "preset=smoke"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "smoke" / name
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows if "reward" in r] == [1] and any("eval/reward" in r for r in rows)
    stored = list(RunStore.open(out / "trajectories").iter())
    train = [t for t in stored if t.task.split == "train"]
    assert len(train) == 4 and {t.env for t in stored} == {load_config(EXAMPLES / name / "config.yaml").env.name}
    assert all(set(t.rewards) == ({"accuracy", "format"} if name.startswith("vlmr1") else
                                  {"accuracy", "format", "tool_bonus"}) for t in train)
    assert (out / "checkpoints" / "step_000001").is_dir()


TUTORIAL = Path(__file__).parents[1] / "docs" / "tutorial_custom_dataset.md"
_FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


@pytest.mark.slow
def test_tutorial_runs_as_written(tmp_path, monkeypatch):
    """docs/tutorial_custom_dataset.md, in an empty folder: its python blocks run in order, each yaml block is
    written to the file its first line's command names, each `agent-grpo ...` line of a bash block runs."""
    monkeypatch.chdir(tmp_path)
    blocks = _FENCE.findall(TUTORIAL.read_text())
    assert [lang for lang, _ in blocks] == ["python", "python", "yaml", "bash"]
    namespace: dict = {}
    for lang, code in blocks:
        if lang == "python":
            exec(compile(code, str(TUTORIAL), "exec"), namespace)  # noqa: S102 - the tutorial's own code
        elif lang == "yaml":
            command = code.splitlines()[0]
            assert command.startswith("# agent-grpo train ")
            Path(command.split()[-1]).write_text(code)
        else:
            for line in code.splitlines():
                args = shlex.split(line)
                assert args[0] == "agent-grpo", line
                result = CliRunner().invoke(app, args[1:], env={"COLUMNS": "200"})
                assert result.exit_code == 0, f"{line}\n{result.output}"
    rows = read_metrics(tmp_path / "runs" / "my_cards_smoke" / "metrics.jsonl")
    assert [r["step"] for r in rows if "reward" in r] == [1]
    stored = list(RunStore.open(tmp_path / "runs" / "my_cards_smoke" / "trajectories").iter())
    assert {t.task.answer for t in stored if t.task.split == "train"} <= {str(d) for d in range(6)}
    assert (tmp_path / "my_cards_smoke.html").stat().st_size > 1000
