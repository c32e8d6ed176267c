"""scripts/setup.sh says what it is doing, and why Chromium is missing when it cannot install it.

Run against stubs: a fake venv whose python records the pip calls, and a PATH where apt-get fails."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def stubs(tmp_path):
    venv, bin_dir = tmp_path / "venv", tmp_path / "bin"
    (venv / "bin").mkdir(parents=True)
    bin_dir.mkdir()
    calls = tmp_path / "pip_calls.txt"
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/bash\necho "$@" >> {calls}\n')
    for name, body in {"apt-get": 'echo "E: Unable to locate package chromium" >&2\nexit 100',
                       "id": "echo 0"}.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
    for path in [python, *bin_dir.iterdir()]:
        path.chmod(0o755)
    for tool in ("bash", "dirname", "grep", "tail", "rm"):  # what the script needs, and no chromium
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return venv, bin_dir, calls


def run_setup(venv: Path, bin_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": str(bin_dir), "AGENT_GRPO_VENV": str(venv), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([shutil.which("bash"), str(ROOT / "scripts" / "setup.sh"), *args], capture_output=True,
                          text=True, env=env, timeout=60, check=False)


def test_setup_prints_a_line_per_phase(stubs):
    venv, bin_dir, calls = stubs
    out = run_setup(venv, bin_dir)
    assert out.returncode == 0, out.stderr
    phases = [line for line in out.stdout.splitlines() if line.startswith("[setup")]
    assert len(phases) == 5 and "using the virtual environment" in phases[0]
    assert "installing torch==2.13.0" in phases[1] and "installing agent-grpo" in phases[2]
    assert "compiling bytecode" in phases[3] and phases[4].endswith("done")
    pip, compileall = calls.read_text().count("-m pip install --no-compile"), calls.read_text().splitlines()[-1]
    assert pip == 2 and compileall.startswith("-m compileall -q -j 0 ") and compileall.endswith(" envs/agent_grpo_envs")


def test_a_failed_chromium_install_is_reported_and_recorded_for_the_skip_reason(stubs):
    venv, bin_dir, _ = stubs
    out = run_setup(venv, bin_dir, "dev")
    assert out.returncode == 0, out.stderr
    assert "installing chromium with apt-get" in out.stdout
    assert "WARNING: chromium is not installed: apt-get install chromium failed" in out.stderr
    assert "Unable to locate package chromium" in out.stderr and "browser tests will be skipped" in out.stderr
    status = (venv / "chromium-status.txt").read_text()
    assert "Unable to locate package chromium" in status and str(venv / "chromium-install.log") in status


def test_without_root_setup_says_how_to_install_chromium(stubs):
    venv, bin_dir, _ = stubs
    (bin_dir / "id").write_text("#!/bin/bash\necho 1000\n")
    out = run_setup(venv, bin_dir, "dev")
    assert out.returncode == 0 and "needs root; run: sudo apt-get install chromium" in out.stderr
