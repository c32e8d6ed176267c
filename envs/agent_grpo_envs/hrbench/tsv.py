"""A VLMEvalKit-style benchmark TSV (base64 images in a column), read row by row from disk.

Opening streams the file once: it records where each record starts (8 bytes a row), checks every row's
text fields with `parse`, and keeps no image data. Indexing seeks to the record and parses it again, so
a multi-gigabyte TSV opens in constant memory. Records follow the csv module's quoting (a quoted field
may hold tabs, newlines and doubled quotes), as pandas writes them.

VLMEvalKit's space-saving convention is followed: an `image` cell of at most 64 characters is not an
image but the `index` of the row holding it (rotations of one question share one image).
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from agent_grpo_envs._common import DatasetError

IMAGE_REFERENCE_MAX = 64  # VLMEvalKit: a shorter image cell names another row's index


@contextmanager
def _long_fields() -> Iterator[None]:
    # A base64 image is megabytes; the csv module refuses fields over 128 kB by default.
    old = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _parse_record(text: str) -> list[str]:
    with _long_fields():
        rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
    return rows[0] if rows else []


class TsvRows(Sequence[dict[str, str]]):
    """The data rows of a TSV as {column: cell} dicts, read from disk when indexed.

    `parse(row_number, row)` checks a row (raising `DatasetError` naming the file and row) and returns what
    indexing gives; row numbers count data rows from 1 (the header is not one)."""

    def __init__(self, path: Path, required: Sequence[str], parse: Callable[[int, dict[str, str]], dict]):
        self.path, self.parse = Path(path), parse
        self._starts, self._ends = array("q"), array("q")
        self._by_index: dict[str, int] = {}
        try:
            with open(self.path, "rb") as f:
                header_line = f.readline()
                self.columns = _parse_record(self._decode(header_line, 0))
                missing = [c for c in required if c not in self.columns]
                if missing:
                    raise DatasetError(
                        f"{self.path}: missing column(s) {missing}; the header has {self.columns}. An HR-Bench TSV "
                        f"needs {list(required)} (download hr_bench_4k.tsv / hr_bench_8k.tsv from DreamMr/HR-Bench)"
                    )
                offset = len(header_line)
                for start, record in self._records(f, offset):
                    row = self._row(len(self._starts) + 1, record)
                    parse(len(self._starts) + 1, row)
                    if "index" in row:
                        self._by_index[row["index"]] = len(self._starts)
                    self._starts.append(start)
                    self._ends.append(start + len(record))
        except OSError as e:
            raise DatasetError(f"cannot read task file {self.path}: {e}") from e

    def _records(self, f, offset: int) -> Iterator[tuple[int, bytes]]:
        """(byte offset, bytes) of each non-blank record; a record ends at a newline outside quotes."""
        start, parts, quotes = offset, [], 0
        for line in f:
            parts.append(line)
            quotes += line.count(b'"')
            offset += len(line)
            if quotes % 2 == 0:
                record = b"".join(parts)
                if record.strip():
                    yield start, record
                start, parts, quotes = offset, [], 0
        if parts and b"".join(parts).strip():
            raise DatasetError(f"{self.path}: the last record has an unclosed quote; the file is truncated or "
                               "malformed (re-download it)")

    def _decode(self, data: bytes, number: int) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            where = "the header" if number == 0 else f"row {number}"
            raise DatasetError(f"{self.path}, {where}: not UTF-8 text ({e})") from e

    def _row(self, number: int, record: bytes) -> dict[str, str]:
        if b'"' in record:
            cells = _parse_record(self._decode(record, number))
        else:  # no quoting: the csv module's reading is a split on tabs, and ~10x faster on megabyte cells
            cells = [self._decode(cell, number) for cell in record.rstrip(b"\r\n").split(b"\t")]
        if len(cells) != len(self.columns):
            raise DatasetError(f"{self.path}, row {number}: {len(cells)} fields where the header has "
                               f"{len(self.columns)}; the file is malformed (a tab or quote out of place?)")
        return dict(zip(self.columns, cells, strict=True))

    def raw(self, i: int) -> dict[str, str]:
        """Row `i` (0-based) as read, image cell included."""
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} out of range for {len(self)} rows of {self.path}")
        with open(self.path, "rb") as f:
            f.seek(self._starts[i])
            record = f.read(self._ends[i] - self._starts[i])
        return self._row(i + 1, record)

    def image_bytes(self, i: int, column: str = "image") -> bytes:
        """The decoded image of row `i` (following an index reference); DatasetError names row and fix."""
        number, row = i + 1, self.raw(i)
        cell = row[column].strip()
        if len(cell) <= IMAGE_REFERENCE_MAX:
            target = self._by_index.get(cell)
            if target is None:
                raise DatasetError(f"{self.path}, row {number}: the {column} cell {cell!r} is neither base64 data nor "
                                   "the index of another row; re-download the TSV")
            number, cell = target + 1, self.raw(target)[column].strip()
            if len(cell) <= IMAGE_REFERENCE_MAX:
                raise DatasetError(f"{self.path}, row {number}: an image reference points to a row without image data")
        try:
            return base64.b64decode(cell, validate=True)
        except (binascii.Error, ValueError) as e:
            raise DatasetError(
                f"{self.path}, row {number}: the {column} column is not valid base64 ({e}); the file is corrupt or "
                "truncated: re-download it, or re-encode that image with base64.b64encode(open(path, 'rb').read())"
            ) from e

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        return self.parse(i + 1, self.raw(i))
