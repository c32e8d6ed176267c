"""Opening and reading a large dataset-backed environment (issue 14): DeepEyes parquet and RefCOCO JSONL.

    .venv/bin/python bench/dataset_open.py            # full: 50,000 rows each
    .venv/bin/python bench/dataset_open.py --quick    # CI: 5,000 rows each

Each row carries a 64 x 48 JPEG (inline bytes in the parquet, one shared file for the JSONL). The parquet is
written in row groups of 100 rows (what the `datasets` library writes for image data). Reported: the time to
`load_tasks` (open), the rows read and the Python memory allocated while opening (tracemalloc peak), then the
time per task built (images decoded) in file order and in random order, and the rows read after the random
accesses. Wall times are medians of 3 opens; the rest is one pass.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from agent_grpo_envs.deepeyes import DeepEyesEnv
from agent_grpo_envs.deepeyes.make_samples import SCHEMA
from agent_grpo_envs.refcoco import RefCocoEnv
from PIL import Image


def write_parquet(path: Path, n: int, image: bytes) -> None:
    table = pa.table({
        "prompt": pa.array([[{"role": "user", "content": f"<image>\nq{i}"}] for i in range(n)], type=SCHEMA.field("prompt").type),
        "images": pa.array([[{"bytes": image, "path": None}]] * n, type=SCHEMA.field("images").type),
        "reward_model": pa.array([{"ground_truth": str(i), "style": "rule"} for i in range(n)],
                                 type=SCHEMA.field("reward_model").type),
    })
    pq.write_table(table, path, row_group_size=100)


def write_jsonl(folder: Path, n: int, image: bytes) -> Path:
    (folder / "a.jpg").write_bytes(image)
    path = folder / "rec.jsonl"
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"image": "a.jpg", "normal_caption": f"thing {i}", "solution": [1, 2, 30, 40],
                                "width": 64, "height": 48}) + "\n")
    return path


def measure(open_tasks, n: int, accesses: int) -> dict:
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        open_tasks()
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    tasks = open_tasks()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rows = getattr(tasks, "rows", None)
    at_open = rows.rows_read if rows is not None else None
    t0 = time.perf_counter()
    for i in range(accesses):
        tasks[i]
    seq = (time.perf_counter() - t0) / accesses
    rng = random.Random(0)
    t0 = time.perf_counter()
    for _ in range(accesses):
        tasks[rng.randrange(n)]
    rand = (time.perf_counter() - t0) / accesses
    return {"open_ms": 1000 * statistics.median(times), "open_mb": peak / 2**20, "rows_at_open": at_open,
            "seq_ms": 1000 * seq, "rand_ms": 1000 * rand, "rows_after": rows.rows_read if rows is not None else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 rows, 50 accesses (CI)")
    parser.add_argument("--rows", type=int, default=50_000)
    args = parser.parse_args()
    n, accesses = (5_000, 50) if args.quick else (args.rows, 500)
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 30, 30)).save(buf, format="JPEG")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_parquet(folder / "big.parquet", n, buf.getvalue())
        jsonl = write_jsonl(folder, n, buf.getvalue())
        deepeyes = DeepEyesEnv(data={"train": folder / "big.parquet"}, allow_tools=False)
        refcoco = RefCocoEnv(data={"train": jsonl})
        results = {
            f"deepeyes parquet ({(folder / 'big.parquet').stat().st_size / 2**20:.1f} MB)":
                measure(lambda: deepeyes.load_tasks("train"), n, accesses),
            f"refcoco jsonl ({jsonl.stat().st_size / 2**20:.1f} MB)": measure(lambda: refcoco.load_tasks("train"), n, accesses),
        }
    print(f"{n:,} rows, {accesses} accesses each way")
    print(f"| {'source':<28} | open ms | open MB | rows read at open | ms/task in order | ms/task random | rows read after |")
    print(f"|{'-' * 30}|---------|---------|-------------------|------------------|----------------|-----------------|")
    for name, r in results.items():
        at_open = "-" if r["rows_at_open"] is None else f"{r['rows_at_open']:,}"
        after = "-" if r["rows_after"] is None else f"{r['rows_after']:,}"
        print(f"| {name:<28} | {r['open_ms']:7.1f} | {r['open_mb']:7.2f} | {at_open:>17} | {r['seq_ms']:16.2f} | "
              f"{r['rand_ms']:14.2f} | {after:>15} |")


if __name__ == "__main__":
    main()
