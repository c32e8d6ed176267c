"""Where commands write: never over, or in place of, something agent-grpo did not make.

A command that writes a file or folder the user names checks it first:
  * `check_output_file(path, ours)`: not a folder; if it exists, `ours(path)` must say this
    command wrote it (e.g. a report carries our generator tag). Anything else is refused.
  * `check_output_dir(path, owned, ours)`: not a file; a new or empty folder is fine; a folder
    that already holds one of the `owned` names must be one we wrote (`ours(path)`), else refused.
Then it writes with `write_atomic` (a file) or `replace_owned` (a folder's owned entries built in a
staging folder next to them), so a failed command leaves the previous output whole, and only the
entries it owns are ever replaced: other files in the folder are never touched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from agent_grpo.errors import AgentGrpoError

STAGING = ".agent-grpo-staging-"
OLD = ".agent-grpo-old-"


class OutputError(AgentGrpoError, ValueError):
    """An output path would overwrite or delete something agent-grpo did not write."""


def check_output_file(path: str | Path, ours: Callable[[Path], bool], what: str, inside_not: Sequence[Path] = ()) -> Path:
    """`path` if a file may be written there (see the module docstring); OutputError if not."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give a file name for the {what}")
    if path.exists() or path.is_symlink():
        if path.is_symlink() or not path.is_file() or not ours(path):
            raise OutputError(f"{path} exists and is not a {what} agent-grpo wrote; remove it or choose another name")
    _not_inside(path, inside_not, what)
    return path


def check_output_dir(path: str | Path, owned: Sequence[str], ours: Callable[[Path], bool], what: str,
                     inside_not: Sequence[Path] = ()) -> Path:
    """`path` if a folder of `owned` entries may be written there; OutputError if not."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} exists and is not a folder; give a folder for the {what}")
    _not_inside(path, inside_not, what)
    if path.is_dir():
        clash = [n for n in owned if (path / n).exists() or (path / n).is_symlink()]
        if clash and not ours(path):
            raise OutputError(
                f"{path} already holds {', '.join(clash)} that agent-grpo did not write; "
                f"choose a new or empty folder for the {what}"
            )
        for n in clash:
            if (path / n).is_symlink():
                raise OutputError(f"{path / n} is a symbolic link; agent-grpo does not write through links")
    return path


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a whole file through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def staging_dir(out: Path) -> Path:
    """A fresh folder inside `out` to build the owned entries in (leftovers of a killed run are removed)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob(STAGING + "*"), *out.glob(OLD + "*")]:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)  # named by us, never by a user
    return Path(tempfile.mkdtemp(dir=out, prefix=STAGING))


def replace_owned(out: Path, staged: Path, owned: Sequence[str]) -> None:
    """Move the `owned` entries built in `staged` into `out`, removing the previous ones (ours, checked)."""
    old = Path(tempfile.mkdtemp(dir=out, prefix=OLD))
    for name in owned:
        if (out / name).exists():
            os.replace(out / name, old / name)
        if (staged / name).exists():
            os.replace(staged / name, out / name)
    shutil.rmtree(old)
    shutil.rmtree(staged)


def _not_inside(path: Path, folders: Sequence[Path], what: str) -> None:
    target = path.resolve()
    for folder in folders:
        base = Path(folder).resolve()
        if target == base or target.is_relative_to(base):
            raise OutputError(f"{path} is inside {folder}; write the {what} somewhere else")
