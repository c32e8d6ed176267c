"""The `agent-grpo` command line: plugins from installed packages, sample renders, the demo run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / "agent-grpo"


def cli(*args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, env=full_env, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def example_plugins(tmp_path_factory) -> Path:
    """The two example packages, pip-installed into a private folder as a user would install them."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target),
         str(ROOT / "examples" / "agent-grpo-example-tool"), str(ROOT / "examples" / "agent-grpo-example-env")],
        check=True, capture_output=True,
    )
    return target


def test_tools_list_shows_the_builtin_plugin_package():
    out = cli("tools", "list")
    assert out.returncode == 0, out.stderr
    for name in ("zoom_in", "crop", "rotate", "flip", "enhance", "grid"):
        assert name in out.stdout
    assert "agent-grpo-tools" in out.stdout and "image_zoom_in_tool" in out.stdout


def test_tools_list_schema_piped_is_one_json_document():
    out = cli("tools", "list", "--schema")  # stdout is a pipe
    assert out.returncode == 0, out.stderr
    schemas = json.loads(out.stdout)  # before: a table and one highlighted block per tool, padded to 160 columns
    names = {s["function"]["name"] for s in schemas}
    assert {"zoom_in", "crop", "rotate", "flip", "enhance", "grid"} <= names
    [zoom] = [s for s in schemas if s["function"]["name"] == "zoom_in"]
    assert "bbox_2d" in zoom["function"]["parameters"]["properties"]  # the JSON schema the model is shown


def test_installed_example_plugins_appear(example_plugins):
    before_tools, before_envs = cli("tools", "list").stdout, cli("envs", "list").stdout
    env = {"PYTHONPATH": str(example_plugins)}
    after_tools, after_envs = cli("tools", "list", env=env).stdout, cli("envs", "list", env=env).stdout
    assert "measure" in after_tools and "agent-grpo-example-tool" in after_tools
    assert "count-dots" in after_envs and "agent-grpo-example-env" in after_envs
    if not (ROOT / ".venv").exists() or "agent-grpo-example-tool" not in before_tools:
        assert "measure" not in before_tools and "count-dots" not in before_envs
    for name in ("visual-search", "vstar", "grounding"):
        assert name in before_envs


def test_envs_show_renders_illegible_full_view_and_legible_zoom(tmp_path):
    out = cli("envs", "show", "visual-search", "--n", "2", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    files = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(files) == 6
    sizes = {p.name.rsplit("_", 2)[-2] + "_" + p.name.rsplit("_", 2)[-1]: Image.open(p).size for p in tmp_path.glob("*.png")}
    assert sizes["full_view.png"] == (112, 112) and sizes["zoomed_cell.png"] == (112, 112)  # both views 112 px


def test_envs_show_rejects_an_unknown_env(tmp_path):
    out = cli("envs", "show", "no-such-env", "--out", str(tmp_path))
    assert out.returncode != 0
    assert "not installed" in (out.stderr + out.stdout) and "visual-search" in (out.stderr + out.stdout)


def test_rollouts_runs_and_saves_a_replayable_run(tmp_path):
    run = tmp_path / "rollouts"
    out = cli("rollouts", "--n", "3", "--group-size", "2", "--out", str(run))
    assert out.returncode == 0, out.stderr
    assert "accuracy" in out.stdout and (run / "report.html").exists()
    lines = (run / "trajectories.jsonl").read_text().splitlines()
    assert len(lines) == 6
    first = json.loads(lines[0])
    assert first["trajectory"]["env"] == "visual-search" and first["logprobs"]["sampled_tokens"] > 0
    listed = cli("replay", "list", str(run))
    assert listed.returncode == 0 and "visual-search" in listed.stdout
