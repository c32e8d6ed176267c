"""`agent-grpo train|sft --check`: a config is refused with its field and the fix before anything runs or is written."""

from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner

from agent_grpo.cli.main import app
from agent_grpo.errors import ConfigError
from agent_grpo.train.config import load_config

BILLION_LAUGHS = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
    + "env: {options: {x: *i}}\n"
)


def run(*args: str):
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})
    return result, " ".join(result.output.split())


ENV_CASES = {  # --set overrides -> what the message must say
    "unknown env": (["env.name=no-such-env"], ["env.name", "'no-such-env' is not installed", "visual-search"]),
    "unknown option": (["env.options={colour: red}"], ["env.options of visual-search", "colour", "it accepts config"]),
    "invalid option": (["env.options={config: {grid: 0}}"], ["env.options of visual-search are invalid", "grid"]),
    "unknown split": (["env.train_split=validation"], ["env.train_split", "no split 'validation'", "train, test"]),
    "unknown reward": (["env.reward_weights={acuracy: 1.0}"], ["env.reward_weights", "acuracy", "accuracy"]),
}


@pytest.mark.parametrize("command", ["train", "sft"])
@pytest.mark.parametrize("case", list(ENV_CASES))
def test_check_builds_the_environment_and_refuses_bad_env_settings(command, case, tmp_path):
    overrides, expected = ENV_CASES[case]
    out = tmp_path / "run"
    args = [command, "--check", "--set", f"out_dir={out}"]
    for item in overrides:
        args += ["--set", item]
    result, output = run(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in output
    for piece in expected:
        assert piece in output, result.output
    assert not out.exists()  # nothing written


def test_a_good_config_passes_check_without_writing_anything(tmp_path):
    out = tmp_path / "run"
    result, _ = run("train", "--check", "--set", f"out_dir={out}", "--set", "env.options={config: {}}")
    assert result.exit_code == 0, result.output
    assert not out.exists()


VALUES = {  # --set -> pieces of the message (field, what is wrong)
    "seed=-1": ["seed", "greater than or equal to 0", "got -1"],
    "optim.betas=[2, -1]": ["optim.betas.0", "less than 1", "optim.betas.1", "AdamW (beta1, beta2), each in [0, 1)"],
    "optim.lr=.inf": ["optim.lr", "finite number", "got inf"],
    "optim.lr=.nan": ["optim.lr", "got nan"],
    "optim.lr=-0.001": ["optim.lr", "greater than 0"],
    "loss.beta=.inf": ["loss.beta", "finite number"],
    "rollout.sampling.temperature=.nan": ["rollout.sampling.temperature"],
    "env.reward_weights={accuracy: .inf}": ["env.reward_weights.accuracy", "finite number"],
    "seed=[1": ["override 'seed=[1'", "not valid YAML", "quote it"],
    "seed=!!python/object/apply:os.system [ls]": ["not valid YAML"],
    "seed.x=1": ["seed", "valid integer"],
    "a..b=1": ["'a..b' is not a setting name"],
    "=1": ["is not a setting name"],
    "nothing": ["must look like section.key=value"],
}


@pytest.mark.parametrize("item", list(VALUES))
def test_bad_values_name_the_field_and_never_trace_back(item, tmp_path):
    result, output = run("train", "--check", "--set", f"out_dir={tmp_path / 'run'}", "--set", item)
    assert result.exit_code == 2 and "Traceback" not in output, result.output
    for piece in VALUES[item]:
        assert piece in output, result.output


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    config = tmp_path / "bomb.yaml"
    config.write_text(BILLION_LAUGHS)
    assert len(BILLION_LAUGHS) < 500
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="anchors and aliases"):
        load_config(config)
    assert time.perf_counter() - start < 1.0  # before the fix: minutes (9**9 strings validated)
    result, output = run("train", "--check", str(config))
    assert result.exit_code == 2 and "anchors and aliases" in output


def test_unreadable_config_files_are_named(tmp_path):
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("seed: 1\nout_dir: caf\u00e9\n".encode("latin-1"))
    result, output = run("train", "--check", str(latin))
    assert result.exit_code == 2 and "is not UTF-8 text" in output and "save it as UTF-8" in output
    result, output = run("sft", "--check", str(tmp_path))
    assert result.exit_code == 2 and "is not a file" in output


def test_an_out_dir_that_is_a_file_is_refused(tmp_path):
    file = tmp_path / "taken"
    file.write_text("mine")
    result, output = run("train", "--check", "--set", f"out_dir={file}")
    assert result.exit_code == 2 and "out_dir" in output and "is not a folder" in output and "choose a folder" in output
    assert file.read_text() == "mine"


def test_model_path_to_a_training_checkpoint_names_its_model_folder(tmp_path):
    (tmp_path / "step_000002" / "model").mkdir(parents=True)
    (tmp_path / "step_000002" / "model" / "config.json").write_text("{}")
    result, output = run("train", "--check", "--set", f"model.path={tmp_path / 'step_000002'}")
    assert result.exit_code == 2 and f"set model.path: {tmp_path / 'step_000002' / 'model'}" in output


def test_sft_refuses_a_negative_seed_too():
    result, output = run("sft", "--check", "--set", "seed=-1")
    assert result.exit_code == 2 and "seed" in output and "greater than or equal to 0" in output


def test_check_prints_the_config_as_json_that_survives_a_pipe(tmp_path):
    import json

    out = tmp_path / ("a-very-long-folder-name-" * 8) / "run"
    result = CliRunner().invoke(app, ["train", "--check", "--set", f"out_dir={out}"])  # not a terminal
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["out_dir"] == str(out)  # no line wrapped inside a value
