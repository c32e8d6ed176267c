"""Every script in bench/ runs in its quick mode, so none rots (a benchmark that no longer runs fails here).

Parametrised over a glob of bench/*.py: a new benchmark is picked up without touching this file. It must
accept `--quick` (tiny sizes, seconds) or be listed in `EXCLUDED` with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))
EXCLUDED: dict[str, str] = {}  # file name -> why it cannot run a quick mode (none today)


def test_the_bench_folder_is_found():
    assert {"train_vs_trl.py", "rollout_overhead.py"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_script_has_a_quick_mode(script):
    if script.name in EXCLUDED:
        pytest.skip(EXCLUDED[script.name])
    assert "--quick" in script.read_text(), f"bench/{script.name}: add a --quick mode (or list it in EXCLUDED)"


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_quick_mode_runs(script, tmp_path):
    if script.name in EXCLUDED or "--quick" not in script.read_text():
        pytest.skip("no quick mode (test_every_script_has_a_quick_mode fails for it)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(script), "--quick"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    assert done.returncode == 0, f"bench/{script.name} --quick failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    assert "|" in done.stdout  # each prints its markdown table
