"""Rows of one or more parquet files, read one row group at a time when indexed.

Opening reads only the files' footers (schema, row counts per row group), so a 50k-row file with its
images inline opens in milliseconds and constant memory. Indexing row `i` reads the row group holding
it and keeps that one group for the next access: a sweep in file order reads each group once.
`rows_read` counts the rows read so far. Groups should be small: writers bound them by bytes (current
`datasets`: ~100 MB uncompressed) or rows (pyarrow: up to 1M); `python -m agent_grpo_envs.deepeyes.regroup`
rewrites a file with groups of 64 rows.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from agent_grpo_envs._common import DatasetError


class ParquetRows:
    """Row dicts (Python values) of `paths` taken as one table; `columns` must exist in every file."""

    def __init__(self, paths: Sequence[Path], columns: Sequence[str], fix: str):
        self.paths = [Path(p) for p in paths]
        self.columns = list(columns)
        self.rows_read = 0
        self._files: list[pq.ParquetFile] = []
        self._starts: list[int] = []  # global index of each (file, row group)'s first row
        self._groups: list[tuple[int, int]] = []  # (file index, row group index)
        self._file_starts: list[int] = []  # global index of each file's first row
        n = 0
        for f, path in enumerate(self.paths):
            self._file_starts.append(n)
            try:
                parquet = pq.ParquetFile(path)
            except (OSError, pa.ArrowException) as e:
                raise DatasetError(f"cannot read {path} as parquet: {e}") from e
            names = parquet.schema_arrow.names
            missing = [c for c in self.columns if c not in names]
            if missing:
                raise DatasetError(f"{path}: missing column(s) {missing} (it has {names}); {fix}")
            self._files.append(parquet)
            for g in range(parquet.metadata.num_row_groups):
                self._starts.append(n)
                self._groups.append((f, g))
                n += parquet.metadata.row_group(g).num_rows
        self._n = n
        self._cached: tuple[int, list[dict[str, Any]]] | None = None
        self._lock = threading.Lock()  # rollouts may index from several threads

    def __len__(self) -> int:
        return self._n

    def where(self, i: int) -> str:
        """`file, row k` of global row `i` (k counts from 0 within its file)."""
        f = bisect.bisect_right(self._file_starts, i) - 1
        return f"{self.paths[f]}, row {i - self._file_starts[f]}"

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not isinstance(i, int):
            raise TypeError(f"row index must be an int, got {type(i).__name__}")
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"row {i} out of range: {', '.join(map(str, self.paths))} hold {self._n} rows")
        group = bisect.bisect_right(self._starts, i) - 1
        with self._lock:
            if self._cached is None or self._cached[0] != group:
                f, g = self._groups[group]
                try:
                    table = self._files[f].read_row_group(g, columns=self.columns)
                except (OSError, pa.ArrowException) as e:
                    raise DatasetError(f"{self.paths[f]}: cannot read row group {g}: {e}") from e
                self.rows_read += table.num_rows
                self._cached = (group, table.to_pylist())
            return self._cached[1][i - self._starts[group]]
