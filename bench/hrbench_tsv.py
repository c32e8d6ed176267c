"""How fast does an HR-Bench-sized TSV open, and how much of it stays in memory? (issue 14)

    python bench/hrbench_tsv.py [--rows 200] [--image-mb 2.0] [--repeats 3] [--quick]

Writes a TSV in HR-Bench's layout (one real 3840 x 2160 JPEG, the other rows carrying `--image-mb` of base64
each, as 4K JPEGs do), then times `HRBenchEnv(tsv=...)` (one streaming pass: byte offsets and row checks,
no image decoded), the first task (decoding the JPEG), and a random row read. Memory kept after opening is
measured with tracemalloc on a separate open (tracemalloc slows allocation, so never during the timed ones).
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

from agent_grpo_envs.hrbench import HRBenchEnv
from agent_grpo_envs.hrbench.make_samples import write_tsv
from PIL import Image


def make_tsv(path: Path, rows: int, image_mb: float) -> None:
    blob = base64.b64encode(os.urandom(int(image_mb * 1e6 * 3 / 4))).decode()  # never decoded: only row 0's is
    buf = io.BytesIO()
    Image.new("RGB", (3840, 2160), (90, 120, 200)).save(buf, format="JPEG", quality=90)
    jpeg = base64.b64encode(buf.getvalue()).decode()
    write_tsv(path, [{"index": str(i), "question": "Q?", "answer": "A", "category": "single", "cycle_category": "c1",
                      "A": "a", "B": "b", "C": "c", "D": "d", "image": jpeg if i == 0 else blob} for i in range(rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--image-mb", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20 rows of 0.5 MB, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.image_mb, args.repeats = 20, 0.5, 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hr_bench_4k.tsv"
        make_tsv(path, args.rows, args.image_mb)
        size_mb = path.stat().st_size / 1e6
        opens, firsts, reads = [], [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            env = HRBenchEnv(tsv=path, allow_tools=False)
            opens.append(time.perf_counter() - t)
            t = time.perf_counter()
            assert env.load_tasks()[0].images[0].pil.size == (3840, 2160)
            firsts.append(time.perf_counter() - t)
            t = time.perf_counter()
            env._rows.raw(args.rows * 3 // 4)
            reads.append(time.perf_counter() - t)
        tracemalloc.start()
        env = HRBenchEnv(tsv=path, allow_tools=False)
        kept, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    med = statistics.median
    print("| rows | file MB | open s | MB/s | kept after open kB | peak while opening MB | first task s | row read s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.rows} | {size_mb:.0f} | {med(opens):.2f} | {size_mb / med(opens):.0f} | {kept / 1e3:.0f} | "
          f"{peak / 1e6:.1f} | {med(firsts):.3f} | {med(reads):.4f} |")


if __name__ == "__main__":
    main()
