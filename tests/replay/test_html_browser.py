"""The HTML report in a real headless Chromium: loads cleanly, draws images and boxes, runs no model script.

Leaves a screenshot for a person to look at: tests/replay/artifacts/replay_report.png (or under
$AGENT_GRPO_TEST_ARTIFACTS). Chromium comes from Debian (`scripts/setup.sh dev` installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent_grpo.replay.html import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("AGENT_GRPO_TEST_ARTIFACTS", Path(__file__).with_name("artifacts")))
BOX_C0 = (0xE6, 0x19, 0x4B)  # .c0 stroke: sample 0's zoom boxes
SQUARE = (220, 30, 30)  # the red square of task train-0-0, large in the crops



def why_no_chromium() -> str:
    """The reason `scripts/setup.sh dev` wrote into the venv when it could not install Chromium, if it did."""
    status = Path(sys.prefix) / "chromium-status.txt"
    detail = status.read_text().strip() if status.is_file() else "`scripts/setup.sh dev` installs it (apt-get, as root)"
    return f"chromium is not installed: {detail}"


pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason=why_no_chromium())]


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0", *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture
def report(store, tmp_path) -> Path:
    rows = [r for r in store.rows if r.step == 0]
    return write_report(store, rows, tmp_path / "report.html", title="replay browser test")


def _console(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_loads_without_errors_and_runs_no_model_script(report, tmp_path):
    done = _chromium(tmp_path, "--dump-dom", report.as_uri())
    dom = done.stdout
    assert _console(done.stderr) == []  # no uncaught error, no CSP refusal
    assert re.search(r'<body[^>]*data-ready="1"', dom)  # our script ran to its end
    assert "<title>replay browser test</title>" in dom and "pwned" not in dom.split("</title>")[0]
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in dom  # shown as text
    defs = set(re.findall(r'<image id="(img-[0-9a-f]{16})"', dom))
    uses = set(re.findall(r'<use href="#(img-[0-9a-f]{16})"', dom))
    assert defs and uses == defs
    assert len(re.findall(r'<rect class="box c0"', dom)) >= 3
    assert 'id="shown">8</output>' in dom  # the filter script counted the members


def test_screenshot_shows_images_and_boxes(report, tmp_path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "replay_report.png"
    shot.unlink(missing_ok=True)
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1500,1300", report.as_uri())
    print(f"screenshot: {shot}")
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)

    def count(rgb: tuple[int, int, int], tol: int = 12) -> int:
        return int((np.abs(pixels - np.array(rgb)).max(axis=-1) <= tol).sum())

    assert count(SQUARE) > 2000  # the crops of the red square were drawn (images decoded)
    assert count(BOX_C0, tol=20) > 200  # and the zoom boxes on top of their images
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 5000  # the noisy task images, not blank boxes
