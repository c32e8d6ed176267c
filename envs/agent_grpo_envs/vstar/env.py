"""`vstar`: V*-Bench (Wu & Xie 2023, `craigwu/vstar_bench`) from a local folder.

The benchmark's layout, which this reads as is:

    <root>/test_questions.jsonl           one row per question:
        {"image": "direct_attributes/sa_4690.jpg",
         "text": "What is the material of the glove?\\n(A) rubber\\n(B) cotton\\n(C) kevlar\\n(D) leather\\n
                  Answer with the option's letter from the given choices directly.",
         "label": "A", "category": "direct_attributes", "question_id": 0}
    <root>/direct_attributes/*.jpg         115 questions, 4 options
    <root>/relative_position/*.jpg         76 questions, 2 options
    <root>/<category>/<image stem>.json    optional annotation; its "bbox" ([x, y, w, h] per target
                                           object) becomes metadata["target_box"] (their union)

Without `root`, the environment reads the handful of self-made samples shipped in this package
(`samples/`, made by `python -m agent_grpo_envs.vstar.make_samples`), so it works offline and in tests.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from agent_grpo.boxes import Box
from agent_grpo.budget import VisualBudget
from agent_grpo.envs.api import Environment, EvalColumn, EvalProtocol
from agent_grpo.rewards import Rubric
from agent_grpo.tools.registry import ToolRegistry
from agent_grpo.tools.runner import DEFAULT_TIMEOUT_S
from agent_grpo.trajectory import Task
from agent_grpo_envs._common import (
    DatasetError,
    GeneratedTasks,
    JsonlRows,
    compose_panel,
    draw_box,
    full_image_budget,
    image_path,
    load_task_image,
    parse_split,
    search_rubric,
)

SAMPLES = Path(__file__).parent / "samples"
PROTOCOL = (
    "V*-Bench: the question's own text (options '(A) ...' and 'Answer with the option's letter from the given "
    "choices directly.'), the final answer inside <answer></answer>; the letter is extracted with VLMEvalKit's "
    "rules (agent_grpo.rewards.choice); accuracy per category and over all questions (vstar_bench_eval.py)"
)
QUESTIONS_FILE = "test_questions.jsonl"
_OPTION = re.compile(r"^\s*\(([A-Z])\)\s*(.+?)\s*$", re.MULTILINE)


class VStarEnv(Environment):
    """V*-Bench multiple choice: find a small object in a high-resolution image, answer a letter."""

    name = "vstar"
    description = "V*-Bench: attribute and spatial questions about small objects in high-resolution images."
    tool_names = ("zoom_in",)
    splits = ("test",)

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        tool_bonus: float = 0.5,
        budget: VisualBudget | None = None,
        tools: ToolRegistry | None = None,
        rubric: Rubric | None = None,
        allow_tools: bool = True,
        tool_timeout_s: float = DEFAULT_TIMEOUT_S,
    ):
        self.root = Path(root) if root is not None else SAMPLES
        self.tool_bonus = tool_bonus
        questions = self.root / QUESTIONS_FILE
        if not questions.is_file():
            raise DatasetError(
                f"{questions} not found: point root= at a V*-Bench folder (the one holding {QUESTIONS_FILE}, "
                "e.g. a download of the craigwu/vstar_bench dataset)"
            )
        # Rows are checked now and read again when indexed: any number of questions opens in constant memory.
        self._rows = JsonlRows(questions, ("image", "text", "label"), lambda n, row: self._parse_row(questions, n, row))
        super().__init__(budget=budget, tools=tools, rubric=rubric, allow_tools=allow_tools, tool_timeout_s=tool_timeout_s)

    # ---- override points -------------------------------------------------------------------

    def default_budget(self) -> VisualBudget:
        return full_image_budget(turns=5)  # the full image plus a few zooms

    def default_rubric(self) -> Rubric:
        return search_rubric("choice", tool_bonus=self.tool_bonus, tool_cost=0.0)

    def eval_protocol(self) -> EvalProtocol:
        return EvalProtocol(description=PROTOCOL, columns=(
            EvalColumn("zoom_target_coverage", "zoom covers target", tool_users_only=True),
            EvalColumn("zoom_precision", "zoom IoU (target)", tool_users_only=True),
        ))

    def load_tasks(self, split: str = "test", n: int | None = None, seed: int = 0) -> GeneratedTasks:
        """The questions in file order (the first `n`); images are decoded when a task is indexed."""
        parse_split(split, self.splits)
        rows = self._rows if n is None else self._rows[:n]
        return GeneratedTasks(lambda i: self._task(rows[i]), len(rows))

    def render_sample(self, task: Task):
        image = task.images[0].pil
        pictures = super().render_sample(task)
        if "target_box" in task.metadata:
            pictures[0] = ("image0_target", draw_box(image, task.metadata["target_box"], width=max(3, image.width // 300)))
        return pictures

    def render_task(self, task: Task):
        return compose_panel(self.render_sample(task))

    # ---- reading the benchmark ---------------------------------------------------------------

    def _parse_row(self, questions: Path, number: int, row: dict[str, Any]) -> dict[str, Any]:
        where = f"{questions}, line {number}"
        text = row["text"]
        if not isinstance(text, str) or not text.strip():
            raise DatasetError(f"{where}: 'text' must be the question with its options, got {text!r}")
        options = dict(_OPTION.findall(text))
        if not options:
            raise DatasetError(f"{where}: no options like '(A) ...' on their own lines in the question text")
        label = row["label"]
        letter = label.strip().strip("()").upper() if isinstance(label, str) else None
        if letter not in options:
            raise DatasetError(f"{where}: label {label!r} is not one of the options {sorted(options)}")
        path = image_path(self.root, row["image"], where)
        return {
            "where": where, "path": path, "text": text, "label": letter, "choices": options,
            "category": str(row.get("category", path.parent.name)), "question_id": row.get("question_id", number),
            "image": row["image"], "target_box": _annotation_box(path),
        }

    def _task(self, row: dict[str, Any]) -> Task:
        metadata = {
            "choices": row["choices"], "category": row["category"], "question_id": row["question_id"],
            "image": row["image"], "source": row["where"],
        }
        if row["target_box"] is not None:
            metadata["target_box"] = row["target_box"]
        return Task(
            id=f"{self.name}-{row['category']}-{row['question_id']}",
            question=row["text"],
            images=[load_task_image(row["path"], row["where"])],
            answer=row["label"],
            split="test",
            metadata=metadata,
        )


def _annotation_box(image: Path) -> list[float] | None:
    """The union of the target objects' boxes from `<image stem>.json`, if that annotation exists."""
    sidecar = image.with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DatasetError(f"annotation {sidecar} is not readable JSON: {e}") from e
    boxes = data.get("bbox") if isinstance(data, dict) else None
    if boxes is None:
        return None  # some other annotation: nothing to take from it
    try:
        xyxy = [Box(x1=b[0], y1=b[1], x2=b[0] + b[2], y2=b[1] + b[3]) for b in boxes]
    except (TypeError, IndexError, KeyError, ValueError) as e:
        raise DatasetError(f"annotation {sidecar}: 'bbox' must be a list of [x, y, w, h], got {boxes!r}") from e
    if not xyxy:
        return None
    return [min(b.x1 for b in xyxy), min(b.y1 for b in xyxy), max(b.x2 for b in xyxy), max(b.y2 for b in xyxy)]
