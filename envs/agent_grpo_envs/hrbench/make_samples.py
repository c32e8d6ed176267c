"""Write the self-made HR-Bench-format samples that ship with the `hrbench` environment.

    python -m agent_grpo_envs.hrbench.make_samples [out_dir]

Two TSVs in HR-Bench's format (`hr_bench_4k_sample.tsv`, `hr_bench_8k_sample.tsv`; columns index, question,
answer, category, cycle_category, A, B, C, D, image): three questions, two "single" (a colour, a letter) and
one "cross" (where one object is relative to another), each in four cycles with its options rotated, 12 rows
per file. The image is base64 JPEG in the first cycle's row; the other rotations name that row's index, as
VLMEvalKit's TSVs do. The scenes are synthetic and scaled down (1600 x 900 and 2240 x 1260, not 4K / 8K)
so the package stays small; the target objects are a few pixels wide. One question holds a quote, a tab and
a newline, so the file needs the csv quoting real TSVs use. Deterministic: re-running writes identical files.
"""

from __future__ import annotations

import base64
import csv
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLUMNS = ["index", "question", "answer", "category", "cycle_category", "A", "B", "C", "D", "image"]
SIZES = {"4k": (1600, 900), "8k": (2240, 1260)}
CYCLES = 4


def _scene(size: tuple[int, int], seed: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    w, h = size
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, (196, 210, 226))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, int(h * 0.62), w, h], fill=(118, 148, 96))
    for _ in range(60):  # clutter: far-away houses and trees
        x, y, s = int(rng.integers(0, w)), int(rng.integers(int(h * 0.45), h)), int(rng.integers(15, 60))
        grey = int(rng.integers(90, 170))
        if rng.random() < 0.5:
            draw.rectangle([x, y, x + s, y + s * 0.7], fill=(grey, grey - 10, grey - 20))
        else:
            draw.ellipse([x, y, x + s * 0.8, y + s], fill=(60, grey, 70))
    return img, draw


def _jpeg_base64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=75)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _questions(size: tuple[int, int]) -> list[dict]:
    w, h = size
    out = []
    img, d = _scene(size, 1)  # a small blue flag
    x, y = int(w * 0.7), int(h * 0.55)
    d.line([x, y, x, y + 40], fill=(60, 60, 60), width=2)
    d.rectangle([x + 1, y, x + 15, y + 9], fill=(30, 70, 200))
    out.append({"question": "What is the color of the small flag on the pole?", "category": "single",
                "options": ["blue", "red", "green", "yellow"], "image": img})
    img, d = _scene(size, 2)  # a letter on a tiny board
    x, y = int(w * 0.3), int(h * 0.6)
    d.rectangle([x, y, x + 22, y + 20], fill=(250, 250, 250), outline=(40, 40, 40))
    d.text((x + 5, y + 1), "K", font=ImageFont.load_default(size=16), fill=(20, 20, 20))
    out.append({"question": "Which letter is written on the small white board?", "category": "single",
                "options": ["K", "X", "H", "R"], "image": img})
    img, d = _scene(size, 3)  # a red ball left of a green box
    x, y = int(w * 0.85), int(h * 0.7)
    d.ellipse([x, y, x + 12, y + 12], fill=(220, 30, 30))
    d.rectangle([x + 40, y - 2, x + 56, y + 14], fill=(30, 160, 60))
    out.append({"question": 'Where is the red ball relative to the "green"\tbox?\n(Both are small, lower right.)',
                "category": "cross", "options": ["to its left", "to its right", "above it", "below it"], "image": img})
    return out  # the right option is listed first; the cycles rotate it through A-D


def rows(version: str) -> list[dict]:
    """The TSV rows of one version, cycle by cycle (the first cycle's rows hold the images)."""
    questions = _questions(SIZES[version])
    out = []
    for cycle in range(CYCLES):
        for q_number, q in enumerate(questions):
            rotated = [q["options"][(j - cycle) % 4] for j in range(4)]  # the right one moves to letter `cycle`
            index = cycle * len(questions) + q_number
            out.append({
                "index": str(index), "question": q["question"], "answer": "ABCD"[rotated.index(q["options"][0])],
                "category": q["category"], "cycle_category": f"cycle_{cycle + 1}",
                **dict(zip("ABCD", rotated, strict=True)),
                "image": _jpeg_base64(q["image"]) if cycle == 0 else str(q_number),
            })
    return out


def write_tsv(path: Path, table: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)


def build(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for version in SIZES:
        write_tsv(out / f"hr_bench_{version}_sample.tsv", rows(version))


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "samples")
