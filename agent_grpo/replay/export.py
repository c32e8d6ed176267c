"""`replay export`: selected trajectories as an SFT dataset (JSONL) and a Hugging Face `datasets` folder.

Written to OUT:

    OUT/sft.jsonl        one conversation a line (the format the SFT warm start reads):
        {"id": "s3-task7-2", "env": "my-env", "task_id": "task7", "reward": 1.2,
         "messages": [
           {"role": "system",    "content": [{"type": "text", "text": "..."}]},
           {"role": "user",      "content": [{"type": "text", "text": "Image 0 (640x480):"},
                                             {"type": "image", "image": "images/ab/ab12....png"},
                                             {"type": "text", "text": "What ...?"}]},
           {"role": "assistant", "content": [{"type": "text", "text": "<think>...</think><tool_call>...</tool_call>"}]},
           {"role": "tool",      "content": [{"type": "text", "text": "..."}, {"type": "image", "image": "images/..."}]},
           {"role": "assistant", "content": [{"type": "text", "text": "<think>...</think><answer>...</answer>"}]}],
         "images": ["images/ab/ab12....png", ...]}          # every image part, in order of appearance
    OUT/images/          the PNG files, content-addressed like a run (paths above are relative to OUT)
    OUT/export_meta.json source run, env, tool schemas (what the model was shown), rubric, filter, count
    OUT/hf/              `datasets.Dataset.save_to_disk`: columns id, env, task_id, reward, messages
                         (image parts keep their path in "image"), images (a list of `datasets.Image`,
                         pixels inside the folder, in the same order); `datasets.load_from_disk(OUT/hf)`.

Assistant turns are the sampled text verbatim (never re-rendered): training on them teaches exactly
what was sampled. Tool messages keep role "tool"; the chat template decides how to render them.
Images are the stored full-resolution pixels; the trainer resizes them to its own visual budget.

Safety: an image is copied only after its pixels were checked against its hash (a trajectory with
a missing, altered or unreadable image is skipped and reported), paths are built from validated
hashes only, and OUT is written through a staging folder: the previous export's files are replaced
whole (none left stale), and a folder holding an `hf/`, `images/`... that no export wrote is refused.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_grpo.content import ImagePart
from agent_grpo.errors import StoreError
from agent_grpo.outputs import check_output_dir, replace_owned, staging_dir
from agent_grpo.paths import check_sha256
from agent_grpo.store.run_store import RunStore
from agent_grpo.trajectory import Trajectory

OWNED = ("sft.jsonl", "images", "export_meta.json", "hf")
META = "export_meta.json"
MARK = "agent_grpo_export"  # key of export_meta.json that says an export wrote the folder


@dataclass
class ExportReport:
    written: int = 0
    skipped: list[str] = field(default_factory=list)  # "id: why" of trajectories left out


def sft_row(traj: Trajectory) -> dict[str, Any]:
    """One trajectory as an SFT row; image paths are relative to the export folder."""
    images: list[str] = []
    messages = []
    for m in traj.messages:
        content = []
        for part in m.content:
            if isinstance(part, ImagePart):
                path = image_path(part)
                images.append(path)
                content.append({"type": "image", "image": path})
            else:
                content.append({"type": "text", "text": part.text})
        messages.append({"role": m.role, "content": content})
    return {"id": traj.id, "env": traj.env, "task_id": traj.task.id, "reward": traj.reward,
            "messages": messages, "images": images}


def image_path(part: ImagePart) -> str:
    sha = check_sha256(part.sha256)  # the hash becomes a path: nothing but hex digits
    return f"images/{sha[:2]}/{sha}.png"


def is_export(folder: Path) -> bool:
    """Whether `folder` was written by `export` (its export_meta.json says so)."""
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and (MARK in meta or "source_run" in meta)  # older exports lack MARK


def check_out(store: RunStore, out: str | Path) -> Path:
    """`out` if an export may be written there; OutputError (with the reason) if not."""
    return check_output_dir(out, OWNED, is_export, "export", inside_not=[store.path])


def export(store: RunStore, trajectories: Iterable[Trajectory], out: str | Path, hf: bool = True,
           description: dict[str, Any] | None = None, skipped: list[str] | None = None) -> ExportReport:
    """Write `trajectories` to `out` (see the module docstring).

    Trajectories whose images are missing or fail their hash check are skipped and listed in the
    report; `skipped` carries damaged records found while reading `trajectories`, if any."""
    out = check_out(store, out)
    report = ExportReport(skipped=skipped if skipped is not None else [])
    stage = staging_dir(out)
    try:
        rows = []
        copied: set[str] = set()
        with (stage / "sft.jsonl").open("w", encoding="utf-8") as f:
            for traj in trajectories:
                try:
                    row = sft_row(traj)
                    for part in {p.sha256: p for m in traj.messages for p in m.images}.values():
                        if part.sha256 not in copied:
                            _copy_image(store, part.sha256, stage)
                            copied.add(part.sha256)
                except (StoreError, ValueError) as e:
                    report.skipped.append(f"{traj.id}: {e}")
                    continue
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                rows.append(row)
        (stage / "images").mkdir(exist_ok=True)
        meta = {MARK: 1, "source_run": str(store.path), "env": store.meta.env, "tools": store.meta.tool_schemas,
                "rubric": store.meta.rubric, "count": len(rows), "skipped": len(report.skipped), **(description or {})}
        (stage / META).write_text(json.dumps(meta, indent=2) + "\n")
        if hf:
            _save_hf(rows, stage)
        replace_owned(out, stage, OWNED)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    report.written = len(rows)
    return report


def _copy_image(store: RunStore, sha: str, out: Path) -> None:
    """Copy one stored PNG after checking its pixels hash to its name."""
    if store.load_image(sha) is None:
        why = store.damaged_images.get(sha) or "not stored in the run (size cap?)"
        raise StoreError(f"image {sha[:12]}: {why}")
    target = out / f"images/{sha[:2]}/{sha}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(store.images.path(sha), target)


def _save_hf(rows: list[dict[str, Any]], out: Path) -> None:
    import datasets  # the dev extra; only this folder needs it

    part = {"type": datasets.Value("string"), "text": datasets.Value("string"), "image": datasets.Value("string")}
    features = datasets.Features({
        "id": datasets.Value("string"), "env": datasets.Value("string"), "task_id": datasets.Value("string"),
        "reward": datasets.Value("float64"),
        "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.List(part)}),
        "images": datasets.List(datasets.Image()),
    })
    records = []
    for row in rows:
        # Arrow needs one struct type for every part: text parts get image None and vice versa.
        messages = [{"role": m["role"], "content": [{"type": p["type"], "text": p.get("text"), "image": p.get("image")}
                                                     for p in m["content"]]} for m in row["messages"]]
        # Image bytes go inside the dataset so the folder stands alone.
        images = [{"bytes": (out / p).read_bytes(), "path": p} for p in row["images"]]
        records.append({**row, "messages": messages, "images": images})
    target = out / "hf"  # `out` is the staging folder: nothing there yet
    datasets.Dataset.from_list(records, features=features).save_to_disk(str(target))
