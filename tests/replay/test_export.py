"""Export as an SFT dataset: verbatim assistant turns, image files by path, and a `datasets` folder."""

from __future__ import annotations

import json

import datasets
from PIL import Image

from agent_grpo.images import image_sha256
from agent_grpo.replay.export import export


def test_sft_jsonl_and_hf_folder(store, tmp_path):
    rows = [r for r in store.rows if r.correct]
    out = tmp_path / "sft"
    assert export(store, store.iter(rows), out).written == len(rows)

    lines = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    assert [r["id"] for r in lines] == [r.id for r in rows]
    for line in lines:
        traj = store.read(line["id"])
        said = [m["content"][0]["text"] for m in line["messages"] if m["role"] == "assistant"]
        assert said == [t.text for t in traj.turns]  # verbatim
        assert [m["role"] for m in line["messages"]][:2] == ["system", "user"]
        parts = [p["image"] for m in line["messages"] for p in m["content"] if p["type"] == "image"]
        assert parts == line["images"] and len(parts) == len(traj.images)
        for rel in parts:
            with Image.open(out / rel) as im:
                assert image_sha256(im.convert("RGB")) == rel.split("/")[-1].removesuffix(".png")

    meta = json.loads((out / "export_meta.json").read_text())
    assert meta["count"] == len(rows) and {t["function"]["name"] for t in meta["tools"]} == {"tz_zoom", "tz_note"}

    ds = datasets.load_from_disk(str(out / "hf"))
    assert ds["id"] == [r.id for r in rows]
    first = ds[0]
    assert len(first["images"]) == len(lines[0]["images"])
    assert first["images"][0].size == (192, 128)
    assert first["messages"][2]["content"][0]["text"] == lines[0]["messages"][2]["content"][0]["text"]
