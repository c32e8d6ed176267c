"""Text from a stored run made safe to print on a terminal.

Model output (and anything else read from a run) may hold terminal control sequences: ESC codes
that recolour, move the cursor, retitle the window or hide text, carriage returns that overwrite a
line, bidirectional overrides that reorder it. Before such text reaches the terminal every such
character is written as a visible escape (`\\x1b`, `\\u202e`); newlines and tabs are kept.
(Rich markup is a separate matter: model text is always a `rich.text.Text`, never parsed as markup.)
"""

from __future__ import annotations

import re
from typing import Any

from agent_grpo.store.record import StoredRecord

# C0 controls but tab and newline, DEL, C1 controls, zero-width and bidirectional formatting characters.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with every terminal control character written as a visible escape."""
    return _UNSAFE.sub(_escape, text)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(k) if isinstance(k, str) else k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def printable_record(record: StoredRecord) -> StoredRecord:
    """A copy of `record` whose every string is `printable` (what `replay show` renders)."""
    return StoredRecord.model_validate(_clean(record.model_dump(mode="python")))
