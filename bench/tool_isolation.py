"""Per-call cost of running tools in worker processes (issue 11, item 7).

    .venv/bin/python bench/tool_isolation.py            # full: 200 calls per row
    .venv/bin/python bench/tool_isolation.py --quick    # CI: 10 calls per row

Each row times `run_tool_calls` for one call, in-process (`ToolWorkers(isolate=False)`: a thread per call,
no isolation) and isolated (the default: a persistent worker process), after one warm-up call (worker
boot and the first copy of the image's pixels are excluded; both are reported once below the table).
Tools: `echo` (no work: pure overhead) and the built-in `zoom_in` on a 448 px and a 2048 px image
(a 500 px crop comes back). Median of per-call wall times, in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hostile_tools import echo  # noqa: E402  (a module-level test tool a worker can import)

from agent_grpo.content import ImagePart  # noqa: E402
from agent_grpo.tools import load_tools  # noqa: E402
from agent_grpo.tools.api import ToolContext  # noqa: E402
from agent_grpo.tools.isolation import ToolWorkers  # noqa: E402
from agent_grpo.tools.runner import ToolJob, run_tool_calls  # noqa: E402
from agent_grpo.trajectory import ToolCall  # noqa: E402


def _time(pool: ToolWorkers, registry, name: str, arguments: dict, ctx: ToolContext, n: int) -> tuple[float, float]:
    job = lambda: ToolJob(call=ToolCall(id="c", name=name, arguments=arguments, raw=""), context=ctx)  # noqa: E731
    t0 = time.perf_counter()
    [run] = run_tool_calls([job()], registry, pool=pool)
    first = time.perf_counter() - t0
    assert run.error is None, run.error
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        run_tool_calls([job()], registry, pool=pool)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 calls per row (CI)")
    ap.add_argument("--calls", type=int, default=200)
    a = ap.parse_args()
    n = 10 if a.quick else a.calls
    registry = load_tools().subset(["zoom_in"])
    registry.register(echo)
    rows = []
    boots = []
    for size in (448, 2048):
        pixels = np.random.default_rng(0).integers(0, 255, size=(size, size, 3), dtype=np.uint8)
        ctx = ToolContext(images=[ImagePart.from_pil(Image.fromarray(pixels))])
        for name, args in (("echo", {"text": "x"}), ("zoom_in", {"bbox_2d": [0, 0, 500, 500]})):
            if name == "echo" and size != 448:
                continue
            inproc = ToolWorkers(isolate=False)
            isolated = ToolWorkers(max_workers=1)
            t_in, _ = _time(inproc, registry, name, args, ctx, n)
            t_iso, first = _time(isolated, registry, name, args, ctx, n)
            isolated.close()
            boots.append(first)
            label = name if name == "echo" else f"zoom_in, {size} px image"
            rows.append((label, t_in, t_iso, t_iso - t_in))
    print(f"| call | in-process ms | isolated ms | overhead ms |  ({n} calls each, median)")
    print("|---|---|---|---|")
    for label, t_in, t_iso, d in rows:
        print(f"| {label} | {t_in:.2f} | {t_iso:.2f} | {d:+.2f} |")
    print(f"first call on a fresh worker (boot + first image copy): {min(boots):.2f}-{max(boots):.2f} s")


if __name__ == "__main__":
    main()
