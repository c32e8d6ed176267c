"""`refcoco`: RefCOCO / RefCOCO+ / RefCOCOg referring-expression comprehension as VLM-R1 trains it.

Single turn, no tools: the model reads the expression, thinks, and answers the referred object's box
`[x1, y1, x2, y2]` in the original image's pixels. Reward (VLM-R1's REC): IoU accuracy + format.

The format read is the one VLM-R1 distributes (`rec_jsons_processed.zip` of `omlab/VLM-R1`:
`refcoco_train.json`, `refcocop_val.json`, `refcocog_test.json`, ...; a JSON array, or JSONL with
one object a line), rows like

    {"image": "COCO_train2014_000000581857.jpg",                 # relative to image_root (COCO train2014)
     "problem": "Please provide the bounding box coordinate of the region this sentence describes: ...",
     "normal_caption": "the lady with the blue shirt",          # the expression
     "solution": [103.93, 299.99, 238.15, 477.41],              # x1, y1, x2, y2 in original pixels
     "normalized_solution": [...], "width": 640, "height": 480, "dataset": "refcoco"}

Needed: `image`, `solution`, and `normal_caption` or `problem`. `solution` may also be a string holding a
box (`"<answer>[103, 299, 238, 477]</answer>"`, as VLM-R1's JSONL examples write it). `id` or
`question_id` name the task when present (else the row number). `width`/`height`, when present, are
checked against the box at load; otherwise the box is checked against the decoded image when the task
is first indexed.

Options (`env.options` in a config, keyword arguments here):

    data:          {split: file}   annotation file per split ("train", "val", "test"); default: the shipped
                                   samples (train: a JSON array, test: JSONL)
    image_root:    folder          where the rows' `image` paths live (VLM-R1: the COCO train2014 folder);
                                   default: the annotation file's folder
    box_policy:    error | clip    a box reaching outside its image: `error` (default) names file, row and
                                   fix; `clip` clips it to the image. Either way boxes at most 1 px outside
                                   are clipped silently (COCO's float boxes overrun by rounding).
    iou_threshold: null | 0..1     null (default): accuracy is the IoU, as VLM-R1 trains; 0.5: 1 when IoU >= 0.5
                                   (the evaluation metric, Acc@0.5)
    format_weight: 1.0             VLM-R1 adds format and accuracy with equal weight

Prompt: the image with its size ("Image 0 (640x480): ...", the default prompt), then VLM-R1's REC question
template around the row's `problem` (built from the expression when a row has none). Answers are in original pixels (Qwen2.5-VL's own absolute frame
when the image is not downscaled: the default budget keeps COCO-sized images whole).
Format reward: 1 when the turn is well-formed (`<think>` then `<answer>`) and its answer holds a box.
(VLM-R1's regex also wants the box inside JSON braces; any box `parse_box` reads counts here.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent_grpo.boxes import Box
from agent_grpo.budget import VisualBudget
from agent_grpo.envs.api import Environment
from agent_grpo.rewards import HACKING_METRICS, Rubric, accuracy, parse_box, reward
from agent_grpo.tools.registry import ToolRegistry
from agent_grpo.tools.runner import DEFAULT_TIMEOUT_S
from agent_grpo.trajectory import Task, Trajectory
from agent_grpo_envs._common import (
    DatasetError,
    GeneratedTasks,
    JsonlRows,
    check_data_splits,
    compose_panel,
    draw_box,
    full_image_budget,
    image_path,
    load_task_image,
    parse_split,
)
from agent_grpo_envs.grounding.env import iou_at

SAMPLES = Path(__file__).parent / "samples"
DEFAULT_DATA = {"train": SAMPLES / "refcoco_train.json", "test": SAMPLES / "refcoco_val.jsonl"}
# VLM-R1's REC question template (`get_question_template("rec")`).
QUESTION_TEMPLATE = (
    "{problem} First output the thinking process in <think> </think> tags and then output the final answer in "
    "<answer> </answer> tags. Output the final answer in JSON format."
)
PROBLEM = "Please provide the bounding box coordinate of the region this sentence describes: {expression}."
SYSTEM_PROMPT = (
    "You are a careful visual assistant. Think step by step inside <think></think>, then give the final answer "
    "inside <answer></answer>."
)
OVERRUN_PX = 1.0  # boxes overrunning the image by at most this are clipped without a word


class RefCocoConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    data: dict[str, Path] = Field(
        default_factory=lambda: dict(DEFAULT_DATA), description="split -> VLM-R1 REC file (.json array or .jsonl)"
    )
    image_root: Path | None = Field(default=None, description="folder of the images; None: the file's folder")
    box_policy: Literal["error", "clip"] = Field(default="error", description="a box outside its image")
    iou_threshold: float | None = Field(
        default=None, ge=0, le=1, description="None: accuracy is the IoU; else 1 when IoU >= threshold"
    )
    format_weight: float = Field(default=1.0, ge=0)


@reward("format")
def box_format(traj: Trajectory) -> float:
    """1 when the (single) turn is well-formed and its answer holds a box, else 0 (VLM-R1's REC format)."""
    if not traj.turns or not all(t.format_ok for t in traj.turns):
        return 0.0
    return float(parse_box(traj.answer) is not None)


class RefCocoEnv(Environment):
    """Referring expressions in VLM-R1's format, single turn: answer the box, scored by IoU + format."""

    name = "refcoco"
    description = "RefCOCO/RefCOCO+/RefCOCOg referring expressions (VLM-R1 format): answer the box, IoU + format."
    tool_names = ()
    splits = ("train", "val", "test")
    system_prompt = SYSTEM_PROMPT

    def __init__(
        self,
        data: dict[str, str | Path] | None = None,
        image_root: str | Path | None = None,
        box_policy: str = "error",
        iou_threshold: float | None = None,
        format_weight: float = 1.0,
        *,
        budget: VisualBudget | None = None,
        tools: ToolRegistry | None = None,
        rubric: Rubric | None = None,
        allow_tools: bool = True,
        tool_timeout_s: float = DEFAULT_TIMEOUT_S,
    ):
        options = {"image_root": image_root, "box_policy": box_policy, "iou_threshold": iou_threshold,
                   "format_weight": format_weight}
        if data is not None:
            options["data"] = data
        self.config = RefCocoConfig.model_validate(options)
        check_data_splits(self.config.data, self.splits)
        super().__init__(budget=budget, tools=tools, rubric=rubric, allow_tools=allow_tools, tool_timeout_s=tool_timeout_s)

    def default_budget(self) -> VisualBudget:
        # One turn; COCO images (640x480) are shown whole, so the model's pixel frame is the original's.
        return full_image_budget(turns=1)

    def default_rubric(self) -> Rubric:
        threshold = self.config.iou_threshold
        acc = accuracy("iou") if threshold is None else iou_at(threshold)
        return Rubric([acc, box_format.with_weight(self.config.format_weight)], metrics=HACKING_METRICS)

    def load_tasks(self, split: str = "train", n: int | None = None, seed: int = 0) -> GeneratedTasks:
        """The rows of `data[split]` in file order (the first `n`); each image is decoded when its task is indexed."""
        parse_split(split, self.splits)
        if split not in self.config.data:
            raise DatasetError(f"no data for split {split!r}: set env.options.data.{split} to a VLM-R1 REC file")
        rows = self._read(Path(self.config.data[split]), split)
        rows = rows if n is None else rows[:n]
        return GeneratedTasks(lambda i: self._task(rows[i]), len(rows))

    def render_sample(self, task: Task):
        image = task.images[0].pil
        return [("answer_box", draw_box(image, task.answer, color=(20, 20, 20))), *super().render_sample(task)[1:]]

    def render_task(self, task: Task):
        return compose_panel(self.render_sample(task))

    # ---- reading the files -------------------------------------------------------------------

    def _read(self, path: Path, split: str) -> Sequence[dict[str, Any]]:
        """Checked rows: JSONL is re-read from disk when indexed (constant memory); a JSON array is parsed once."""
        if not path.is_file():
            raise DatasetError(f"refcoco data for split {split!r} not found: {path}; point env.options.data.{split} at a file")
        root = Path(self.config.image_root) if self.config.image_root is not None else path.parent
        if not root.is_dir():
            raise DatasetError(f"image_root {root} is not a folder; set env.options.image_root to the COCO image folder")
        if path.suffix == ".jsonl":
            return JsonlRows(path, ("image", "solution"), lambda n, row: self._parse(row, f"{path}, line {n}", root, split, n))
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise DatasetError(f"cannot read {path} as JSON ({e}); VLM-R1's REC files are a JSON array, or JSONL") from e
        if not isinstance(data, list):
            raise DatasetError(f"{path}: expected a JSON array of rows, got {type(data).__name__}")
        rows = []
        for number, row in enumerate(data):
            where = f"{path}, row {number}"
            if not isinstance(row, dict):
                raise DatasetError(f"{where}: expected an object, got {type(row).__name__}")
            missing = [k for k in ("image", "solution") if k not in row]
            if missing:
                raise DatasetError(f"{where}: missing field(s) {missing}; a row needs 'image', 'solution' and "
                                   "'normal_caption' or 'problem'")
            rows.append(self._parse(row, where, root, split, number))
        return rows

    def _parse(self, row: dict[str, Any], where: str, root: Path, split: str, number: int) -> dict[str, Any]:
        caption, problem = row.get("normal_caption"), row.get("problem")
        if not (isinstance(caption, str) and caption.strip()) and not (isinstance(problem, str) and problem.strip()):
            raise DatasetError(f"{where}: needs a non-empty 'normal_caption' (the expression) or 'problem'")
        box = _solution_box(row["solution"], where)
        size = row.get("width"), row.get("height")
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in size):
            box = self._fit(box, float(size[0]), float(size[1]), where)
        expression = caption.strip() if isinstance(caption, str) and caption.strip() else None
        problem = problem.strip() if isinstance(problem, str) and problem.strip() else PROBLEM.format(expression=expression)
        _check_image_entry(root, row["image"], where)
        return {
            "where": where, "root": root, "image": row["image"], "box": box.as_list(),
            "expression": expression or problem, "problem": problem, "split": split,
            "id": row.get("id", row.get("question_id", number)), "dataset": row.get("dataset"),
        }

    def _fit(self, box: Box, width: float, height: float, where: str) -> Box:
        """The box inside a `width` x `height` image: per `box_policy` when it reaches outside."""
        overrun = max(-box.x1, -box.y1, box.x2 - width, box.y2 - height)
        if overrun > OVERRUN_PX and self.config.box_policy == "error":
            raise DatasetError(
                f"{where}: box {box.as_list()} reaches outside the {width:g}x{height:g} image (by {overrun:g} px); "
                "fix the row's 'solution' (x1, y1, x2, y2 in pixels; a COCO [x, y, w, h] box must be converted), "
                "or set env.options.box_policy: clip to clip boxes to the image"
            )
        if overrun > 0:
            box = Box(x1=max(0.0, box.x1), y1=max(0.0, box.y1), x2=min(width, box.x2), y2=min(height, box.y2))
        if box.area <= 0:
            raise DatasetError(f"{where}: box {box.as_list()} is empty inside the {width:g}x{height:g} image; fix the row")
        return box

    def _task(self, row: dict[str, Any]) -> Task:
        image = load_task_image(image_path(row["root"], row["image"], row["where"]), row["where"])
        box = self._fit(Box.from_list(row["box"]), float(image.width), float(image.height), row["where"])
        question = QUESTION_TEMPLATE.format(problem=row["problem"])
        metadata = {"expression": row["expression"], "target_box": box.as_list(), "image": row["image"],
                    "source": row["where"]}
        if row["dataset"] is not None:
            metadata["dataset"] = row["dataset"]
        return Task(
            id=f"{self.name}-{row['split']}-{row['id']}", question=question, images=[image], answer=box.as_list(),
            split=row["split"], metadata=metadata,
        )


def _check_image_entry(root: Path, value: Any, where: str) -> None:
    """The cheap part of `image_path`, for every row at open: a relative path to an existing file. Resolving
    symlinks to prove it stays under `root` costs ~1 ms a row, so that check runs when the task is built."""
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{where}: 'image' must be a relative path string, got {value!r}")
    if os.path.isabs(value) or ".." in value.replace("\\", "/").split("/"):
        raise DatasetError(f"{where}: image path {value!r} must be relative to the image root {root}, without '..'")
    if not os.path.isfile(os.path.join(root, value)):
        raise DatasetError(f"{where}: image file {Path(root) / value} does not exist; check env.options.image_root")


def _solution_box(value: Any, where: str) -> Box:
    """A row's `solution`: [x1, y1, x2, y2], or a string holding one ("<answer>[...]</answer>")."""
    try:
        if isinstance(value, str):
            box = parse_box(value)
            if box is None:
                raise ValueError("no [x1, y1, x2, y2] in it")
        else:
            box = Box.from_list(value)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{where}: 'solution' {value!r} is not a box [x1, y1, x2, y2]: {e}") from e
    if box.area <= 0:
        raise DatasetError(f"{where}: 'solution' {value!r} is an empty box; fix the row")
    return box
