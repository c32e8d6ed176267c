"""Paths built from stored or user data: content hashes checked, every path kept under its root.

A run directory, an export folder or a dataset names files by relative paths and sha256 hashes it
read from JSON, i.e. data anyone could have written. Before such a value becomes a path it goes
through here: a hash must be 64 lowercase hex digits, and the resolved path (symlinks followed)
must lie inside the folder it was meant to be in, so `../../x` or `/etc/passwd` never is.
"""

from __future__ import annotations

import re
from pathlib import Path

from agent_grpo.errors import AgentGrpoError

_SHA256 = re.compile(r"[0-9a-f]{64}")


class UnsafePathError(AgentGrpoError, ValueError):
    """A stored hash or relative path would point outside the folder it belongs to."""


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def check_sha256(value: object) -> str:
    if not is_sha256(value):
        raise UnsafePathError(f"{str(value)[:80]!r} is not a sha256 (64 lowercase hex digits)")
    return value  # type: ignore[return-value]


def contained_path(root: str | Path, rel: str | Path) -> Path:
    """`root / rel` resolved, refusing one that leaves `root` (absolute, `..`, a symlink out)."""
    if not isinstance(rel, str | Path) or not str(rel).strip() or "\0" in str(rel):
        raise UnsafePathError(f"{rel!r} is not a relative path")
    base = Path(root).resolve()
    path = (base / rel).resolve()
    if not path.is_relative_to(base):
        raise UnsafePathError(f"{str(rel)[:200]!r} points outside {base}")
    return path
