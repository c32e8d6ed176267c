"""Output without a terminal: one log line per training step, tables that keep a row on one line."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from agent_grpo.train.progress import StepProgress

BIN = Path(sys.executable).parent / "agent-grpo"


def piped(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("COLUMNS", None)
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def test_without_a_terminal_every_nth_step_and_the_last_print_a_line():
    out = io.StringIO()
    console = Console(file=out, width=80)  # a pipe: not a terminal, 80 columns
    assert not console.is_terminal
    info = "reward 0.52 acc 0.50 calls 1.2 and a long tail of numbers that would not fit in eighty columns"
    with StepProgress("GRPO", total=7, completed=0, console=console, log_every=3) as progress:
        for step in range(1, 8):
            progress.update(step, info)
    lines = out.getvalue().splitlines()
    assert [line.split(" | ")[0] for line in lines] == ["GRPO step 3/7", "GRPO step 6/7", "GRPO step 7/7"]
    assert all(info in line and "elapsed" in line for line in lines)  # one line each, never wrapped


def test_a_resumed_loop_counts_from_its_checkpoint_and_other_processes_stay_quiet():
    out = io.StringIO()
    with StepProgress("SFT", total=4, completed=2, console=Console(file=out)) as progress:
        progress.update(3, "loss 1.000")
        progress.update(4, "loss 0.500")
    assert [line.split(" | ")[0] for line in out.getvalue().splitlines()] == ["SFT step 3/4", "SFT step 4/4"]
    quiet = io.StringIO()
    with StepProgress("GRPO", total=2, completed=0, console=Console(file=quiet), enabled=False) as progress:
        progress.update(1)
        progress.update(2)
    assert quiet.getvalue() == ""


def test_on_a_terminal_the_bar_replaces_the_lines():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with StepProgress("GRPO", total=2, completed=0, console=console) as progress:
        progress.update(1, "reward 0.10")
        progress.update(2, "reward 0.20")
    assert "GRPO step" not in out.getvalue() and "2/2" in out.getvalue()


def test_log_every_must_be_positive():
    with pytest.raises(ValueError, match="log_every"):
        StepProgress("GRPO", total=2, completed=0, console=Console(file=io.StringIO()), log_every=0)


def test_piped_tables_keep_each_row_on_one_line():
    out = piped("envs", "list")
    assert out.returncode == 0, out.stderr
    [row] = [line for line in out.stdout.splitlines() if "visual-search" in line]
    assert "agent-grpo-envs" in row and "zoom_in" in row and "legible after zooming" in row


def test_the_cli_imports_no_torch_until_a_command_needs_it():
    code = "import sys, agent_grpo.cli.main; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
