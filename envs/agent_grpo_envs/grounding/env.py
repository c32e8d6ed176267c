"""`grounding`: referring-expression grounding, answered with a box (VLM-R1's REC task).

Tasks come from a seeded generator of coloured shapes, or, for a split named in `config.data`,
from a JSONL file of `{"image": "relative/path.jpg", "expression": "the man in red", "bbox": [x1, y1, x2, y2]}`
rows (optional `"id"`; `bbox_format="xywh"` for RefCOCO's native [x, y, w, h]). Boxes are in the
original image's pixels, and so is the answer the model writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent_grpo.boxes import Box
from agent_grpo.budget import VisualBudget
from agent_grpo.content import ImagePart
from agent_grpo.envs.api import Environment
from agent_grpo.rewards import (
    HACKING_METRICS,
    Rubric,
    accuracy,
    box_iou,
    conditional_tool_bonus,
    format_reward,
    reward,
)
from agent_grpo.tools.registry import ToolRegistry
from agent_grpo.tools.runner import DEFAULT_TIMEOUT_S
from agent_grpo.trajectory import Task, Trajectory
from agent_grpo_envs._common import (
    DatasetError,
    GeneratedTasks,
    JsonlRows,
    compose_panel,
    draw_box,
    image_path,
    load_task_image,
    parse_split,
    task_seed,
)
from agent_grpo_envs.grounding.generator import generate


class GroundingConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    data: dict[str, Path] = Field(default_factory=dict, description="split -> JSONL file; other splits are synthetic")
    bbox_format: Literal["xyxy", "xywh"] = Field(default="xyxy", description="how the JSONL rows write boxes")
    canvas_size: int = Field(default=448, ge=112, description="side of synthetic images, pixels")
    train_size: int = Field(default=1000, ge=0)
    test_size: int = Field(default=200, ge=0)
    iou_threshold: float | None = Field(
        default=None, ge=0, le=1, description="None: accuracy is the IoU; else 1 when IoU >= threshold (VLM-R1: 0.5)"
    )
    format_weight: float = Field(default=1.0, ge=0, description="VLM-R1 adds format and accuracy with equal weight")


def question(expression: str, width: int, height: int) -> str:
    return (
        f'Locate {expression} in the image. Answer with its bounding box [x1, y1, x2, y2] in pixels of the '
        f"{width}x{height} image."
    )


def iou_at(threshold: float):
    """Accuracy 1 when the answered box overlaps the reference with IoU >= threshold."""

    @reward("accuracy")
    def accuracy_at(traj: Trajectory) -> float:
        return float(box_iou(traj.answer, traj.task.answer) >= threshold)

    return accuracy_at


class GroundingEnv(Environment):
    """Referring-expression grounding: the answer is the referred object's box."""

    name = "grounding"
    description = "Referring-expression grounding: answer the bounding box of the object described, in pixels."
    tool_names = ("zoom_in",)

    def __init__(
        self,
        config: GroundingConfig | dict[str, Any] | None = None,
        *,
        budget: VisualBudget | None = None,
        tools: ToolRegistry | None = None,
        rubric: Rubric | None = None,
        allow_tools: bool = True,
        tool_timeout_s: float = DEFAULT_TIMEOUT_S,
    ):
        self.config = config if isinstance(config, GroundingConfig) else GroundingConfig.model_validate(config or {})
        super().__init__(budget=budget, tools=tools, rubric=rubric, allow_tools=allow_tools, tool_timeout_s=tool_timeout_s)

    def default_budget(self) -> VisualBudget:
        return VisualBudget(max_turns=3, max_images=3, max_pixels_per_image=448 * 448, max_visual_tokens=768)

    def default_rubric(self) -> Rubric:
        acc = accuracy("iou") if self.config.iou_threshold is None else iou_at(self.config.iou_threshold)
        return Rubric(
            [acc, format_reward.with_weight(self.config.format_weight), conditional_tool_bonus(weight=0.0)],
            metrics=HACKING_METRICS,
        )

    def load_tasks(self, split: str = "train", n: int | None = None, seed: int = 0) -> GeneratedTasks:
        """Synthetic tasks, or the rows of `config.data[split]` (the first `n`; images decoded lazily)."""
        parse_split(split, self.splits)
        if split in self.config.data:
            rows = self._read(self.config.data[split], split)
            rows = rows if n is None else rows[:n]
            return GeneratedTasks(lambda i: self._row_task(rows[i]), len(rows))
        if n is None:
            n = self.config.train_size if split == "train" else self.config.test_size
        return GeneratedTasks(lambda i: self._synthetic_task(split, i, seed), n)

    def render_sample(self, task: Task):
        image = task.images[0].pil
        return [("answer_box", draw_box(image, task.answer, color=(20, 20, 20))), *super().render_sample(task)[1:]]

    def render_task(self, task: Task):
        return compose_panel(self.render_sample(task))

    # ---- task sources ------------------------------------------------------------------------

    def _synthetic_task(self, split: str, index: int, seed: int) -> Task:
        s = task_seed(split, index, seed)
        size = self.config.canvas_size
        scene = generate(s, size)
        box = [float(v) for v in scene.target.box]
        return Task(
            id=f"{self.name}-{split}-{seed}-{index}",
            question=question(scene.expression, scene.image.width, scene.image.height),
            images=[ImagePart.from_source(scene.image, lambda: generate(s, size).image)],  # redrawn when needed
            answer=box,
            split=split,
            metadata={
                "seed": s, "index": index, "expression": scene.expression, "target_box": box,
                "objects": [{"color": o.color, "shape": o.kind, "box": list(o.box)} for o in scene.shapes],
            },
        )

    def _read(self, path: Path, split: str) -> JsonlRows:
        """The split's rows, each checked now and read from the file again when indexed (constant memory)."""
        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"grounding data for split {split!r} not found: {path}")
        return JsonlRows(path, ("image", "expression", "bbox"), lambda number, row: self._parse_row(path, split, number, row))

    def _parse_row(self, path: Path, split: str, number: int, row: dict[str, Any]) -> dict[str, Any]:
        where = f"{path}, line {number}"
        if not isinstance(row["expression"], str) or not row["expression"].strip():
            raise DatasetError(f"{where}: 'expression' must be a non-empty string")
        try:
            box = Box.from_list(row["bbox"])
        except ValueError as e:
            raise DatasetError(f"{where}: 'bbox' {row['bbox']!r} is not a box: {e}") from e
        if self.config.bbox_format == "xywh":
            box = Box(x1=box.x1, y1=box.y1, x2=box.x1 + box.x2, y2=box.y1 + box.y2)
        if box.area <= 0:
            raise DatasetError(f"{where}: 'bbox' {row['bbox']!r} is empty")
        return {
            "where": where, "path": image_path(path.parent, row["image"], where), "image": row["image"],
            "expression": row["expression"].strip(), "box": box.as_list(), "id": row.get("id", number), "split": split,
        }

    def _row_task(self, row: dict[str, Any]) -> Task:
        image = load_task_image(row["path"], row["where"])
        return Task(
            id=f"{self.name}-{row['split']}-{row['id']}",
            question=question(row["expression"], image.width, image.height),
            images=[image],
            answer=row["box"],
            split=row["split"],
            metadata={"expression": row["expression"], "target_box": row["box"], "image": row["image"], "source": row["where"]},
        )
