"""Write the self-made DeepEyes-format samples that ship with the `deepeyes` environment.

    python -m agent_grpo_envs.deepeyes.make_samples [out_dir]

`train.parquet` (6 rows) and `test.parquet` (3 rows) in verl's RL layout as DeepEyes distributes it:
`data_source`, `prompt` (system + user message with an `<image>` marker), `images` (list of {bytes, path}
structs, JPEG bytes inline), `reward_model` {ground_truth, style}, `extra_info` {index, question, split},
`ability`. The scenes are synthetic: a small coloured sign or a short word in a 512 x 384 picture,
illegible at a small view, plain after a zoom. The last test row's data_source is "chart". One row has no `extra_info.question` (its question comes
from the prompt); groups of 2 rows, so reading crosses row groups. Deterministic: the same rows every run.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

W, H = 512, 384
SYSTEM = "You are a helpful assistant."
COLORS = {"red": (210, 40, 40), "blue": (40, 70, 210), "green": (30, 150, 60), "yellow": (230, 200, 20)}
WORDS = ["CAFE", "BANK", "TAXI", "HOTEL"]


def _scene(seed: int, kind: str) -> tuple[bytes, str, str]:
    """JPEG bytes, question, answer."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (W, H), (190, 205, 220))
    d = ImageDraw.Draw(img)
    d.rectangle([0, H * 0.6, W, H], fill=(110, 140, 90))
    for _ in range(25):
        x, y, s = int(rng.integers(0, W)), int(rng.integers(int(H * 0.4), H)), int(rng.integers(10, 40))
        g = int(rng.integers(90, 170))
        d.rectangle([x, y, x + s, y + s * 0.7], fill=(g, g - 10, g - 20))
    x, y = int(rng.integers(40, W - 80)), int(rng.integers(60, H - 60))
    if kind == "color":
        name = list(COLORS)[int(rng.integers(len(COLORS)))]
        d.line([x, y, x, y + 30], fill=(60, 60, 60), width=2)
        d.rectangle([x + 1, y, x + 13, y + 8], fill=COLORS[name])
        question, answer = "What is the color of the small flag?", name
    else:
        word = WORDS[int(rng.integers(len(WORDS)))]
        d.rectangle([x, y, x + 44, y + 14], fill=(250, 250, 250), outline=(30, 30, 30))
        d.text((x + 3, y + 1), word, font=ImageFont.load_default(size=11), fill=(10, 10, 10))
        question, answer = "What word is written on the small white sign?", word.lower()
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue(), question, answer


def _rows(split: str, seeds: list[int], sources: list[str]) -> list[dict]:
    rows = []
    for index, (seed, source) in enumerate(zip(seeds, sources, strict=True)):
        data, question, answer = _scene(seed, "color" if seed % 2 else "word")
        rows.append({
            "data_source": source,
            "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"<image>\n{question}"}],
            "images": [{"bytes": data, "path": None}],
            "ability": "vqa",
            "reward_model": {"ground_truth": answer, "style": "model"},
            "extra_info": {"index": index, "question": None if index == 1 else question, "split": split},
        })
    return rows


SCHEMA = pa.schema([
    ("data_source", pa.string()),
    ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
    ("ability", pa.string()),
    ("reward_model", pa.struct([("ground_truth", pa.string()), ("style", pa.string())])),
    ("extra_info", pa.struct([("index", pa.int64()), ("question", pa.string()), ("split", pa.string())])),
])


def write(path: Path, rows: list[dict], row_group_size: int = 2) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path, row_group_size=row_group_size)


def build(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write(out / "train.parquet", _rows("train", [1, 2, 3, 4, 5, 6], ["vstar"] * 6))
    write(out / "test.parquet", _rows("test", [11, 12, 13], ["vstar", "vstar", "chart"]))


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "samples")
