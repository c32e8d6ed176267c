"""Write the self-made VLM-R1-format samples that ship with the `refcoco` environment.

    python -m agent_grpo_envs.refcoco.make_samples [out_dir]

Synthetic scenes of coloured shapes (the `grounding` generator) stand in for COCO photos: four training rows
in a JSON array (`refcoco_train.json`, VLM-R1's `rec_jsons_processed` layout with width/height) and three
test rows as JSONL (`refcoco_val.jsonl`, one with the solution written as `<answer>[...]</answer>`, one
without width/height). Deterministic: re-running writes identical files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from agent_grpo_envs.grounding.generator import generate

SIZE = 224


def _row(out: Path, name: str, seed: int, dataset: str) -> dict:
    scene = generate(seed, SIZE)
    (out / "images").mkdir(parents=True, exist_ok=True)
    scene.image.save(out / "images" / name, quality=90)
    box = [float(v) for v in scene.target.box]
    return {
        "image": f"images/{name}",
        "problem": f"Please provide the bounding box coordinate of the region this sentence describes: {scene.expression}.",
        "normal_caption": scene.expression,
        "solution": box,
        "normalized_solution": [round(v / SIZE * 1000) for v in box],
        "width": SIZE, "height": SIZE, "dataset": dataset, "text_type": "caption",
    }


def build(out: Path) -> None:
    train = [_row(out, f"train_{i}.jpg", 100 + i, d) for i, d in enumerate(["refcoco", "refcoco+", "refcocog", "refcoco"])]
    (out / "refcoco_train.json").write_text(json.dumps(train, indent=1) + "\n", encoding="utf-8")
    test = [_row(out, f"val_{i}.jpg", 200 + i, "refcoco") for i in range(3)]
    test[1]["solution"] = "<answer>[{}]</answer>".format(", ".join(f"{v:g}" for v in test[1]["solution"]))
    del test[2]["width"], test[2]["height"]  # checked against the decoded image instead
    for i, row in enumerate(test):
        row["question_id"] = i
    (out / "refcoco_val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test), encoding="utf-8")


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "samples")
