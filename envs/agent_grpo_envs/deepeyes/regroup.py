"""Rewrite a parquet file with small row groups, so that reading one row reads little else.

    python -m agent_grpo_envs.deepeyes.regroup IN.parquet OUT.parquet [--rows 64]

`deepeyes` reads the whole row group holding a task's row. Writers bound groups by bytes (current
`datasets`: ~100 MB uncompressed; pandas/pyarrow: up to 1M rows), so a random task from a large file may
read ~100 MB. Rewriting once with groups of 64 rows makes each access read a few MB. Streams batch by
batch: memory stays at about one input row group. Columns, types and row order are kept.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow.parquet as pq


def regroup(source: Path, target: Path, rows: int = 64) -> int:
    """Copy `source` to `target` in row groups of `rows` rows; returns the number of rows written."""
    if rows < 1:
        raise ValueError(f"rows per group must be >= 1, got {rows}")
    if Path(source).resolve() == Path(target).resolve():
        raise ValueError(f"{target} is the input file; write to another path")
    parquet = pq.ParquetFile(source)
    written = 0
    with pq.ParquetWriter(target, parquet.schema_arrow) as writer:
        for batch in parquet.iter_batches(batch_size=rows):
            writer.write_batch(batch, row_group_size=rows)
            written += batch.num_rows
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--rows", type=int, default=64, help="rows per row group (64)")
    args = parser.parse_args()
    n = regroup(args.source, args.target, args.rows)
    print(f"wrote {n} rows to {args.target} in row groups of {args.rows}")


if __name__ == "__main__":
    main()
