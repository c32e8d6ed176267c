"""Output folders a command may replace: only those it wrote itself, known by the marker file it leaves there.

`agent-grpo rollouts --out .` or `agent-grpo demo --fresh --out ~` must never delete a repository or a home
folder: a folder that exists, is not empty and has no marker is refused with a message, untouched."""

from __future__ import annotations

import shutil
from pathlib import Path

from agent_grpo.errors import ConfigError

MARKER = ".agent-grpo-output"


def check_replaceable(out: Path, option: str = "--out") -> None:
    """`out` may be deleted and written again: missing, empty, or marked by an agent-grpo command."""
    if out.is_symlink():
        raise ConfigError(f"{option}: {out} is a symbolic link; pass a real folder")
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"{option}: {out} is a file; choose a folder for the run")
    if any(out.iterdir()) and not (out / MARKER).is_file():
        raise ConfigError(
            f"{option}: {out} already holds files that agent-grpo did not write (it has no {MARKER}); "
            "nothing was deleted: choose a new folder, or remove that one yourself"
        )


def replace(out: Path, command: str, option: str = "--out") -> None:
    """Delete `out` if `check_replaceable` allows it, then create it empty with this command's marker."""
    check_replaceable(out, option)
    shutil.rmtree(out, ignore_errors=True)
    claim(out, command)


def claim(out: Path, command: str) -> None:
    """Create `out` if needed and mark it as written by `command` (which may then replace it). A folder that
    already held someone else's files is written into but never marked: it stays irreplaceable."""
    ours = not out.exists() or not any(out.iterdir()) or (out / MARKER).is_file()
    out.mkdir(parents=True, exist_ok=True)
    if ours:
        (out / MARKER).write_text(f"written by `agent-grpo {command}`, which may replace this folder\n")
