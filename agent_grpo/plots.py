"""PNG plots of training curves, read from `metrics.jsonl` files (one JSON object per step).

Headless (matplotlib's Agg backend): plots are files, never windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from agent_grpo.train.metrics import read_metrics  # noqa: E402


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the raw curve of a small batch is mostly noise)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_curves(
    runs: dict[str, Path | list[dict]], panels: Sequence[tuple[str, str]], out: Path, title: str = "",
    window: int = 5,
) -> Path:
    """One panel per (metric key, label), one line per run; raw values faint, moving average solid.

    `runs` maps a legend name to a metrics.jsonl path or its rows. Returns the PNG path."""
    data = {name: read_metrics(src) if isinstance(src, (str, Path)) else src for name, src in runs.items()}
    cols = 2 if len(panels) == 4 else min(3, len(panels))  # 4 panels: a 2 x 2 grid, not 3 + 1 with a hole
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.2 * rows), squeeze=False)
    for ax, (key, label) in zip(axes.flat, panels, strict=False):
        for i, (name, metrics) in enumerate(data.items()):
            points = [(r["step"], r[key]) for r in metrics if key in r and r[key] is not None]
            if not points:
                continue
            steps, values = zip(*points, strict=True)
            color = f"C{i}"
            if len(points) > window:
                ax.plot(steps, values, color=color, alpha=0.25, linewidth=1)
                ax.plot(steps, smooth(list(values), window), color=color, linewidth=2, label=name)
            else:
                ax.plot(steps, values, color=color, marker="o", linewidth=2, label=name)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
