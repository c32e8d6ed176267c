"""`visual-search`: read the digit in the red square, which is only legible after zooming in (and, in the
find variant, only after finding the square: the question does not say where it is)."""

from __future__ import annotations

from typing import Any

from PIL import Image

from agent_grpo.budget import VisualBudget
from agent_grpo.content import ImagePart
from agent_grpo.envs.api import Environment, EvalColumn, EvalProtocol
from agent_grpo.rewards import Rubric
from agent_grpo.tools.registry import ToolRegistry
from agent_grpo.tools.runner import DEFAULT_TIMEOUT_S
from agent_grpo.trajectory import Task
from agent_grpo_envs._common import (
    GeneratedTasks,
    compose_panel,
    draw_box,
    parse_split,
    search_rubric,
    task_seed,
)
from agent_grpo_envs.visual_search.generator import VisualSearchConfig, generate

QUESTION = (
    "What digit is written inside the red square in row {row}, column {col} (box {box})? Answer with the digit only."
)


FIND_QUESTION = "What digit is written inside the red square? Answer with the digit only."


def question_for(cell: int, grid: int, cell_box: tuple[int, int, int, int], names_cell: bool = True) -> str:
    """The question about 1-based, row-major `cell`, naming its box in canvas pixels (or, with
    `names_cell=False`, naming nothing: the model has to find the one red square itself)."""
    if not names_cell:
        return FIND_QUESTION
    row, col = divmod(cell - 1, grid)
    return QUESTION.format(row=row + 1, col=col + 1, box="[" + ", ".join(str(v) for v in cell_box) + "]")


class VisualSearchEnv(Environment):
    """Procedural visual search, the embedded default task (DESIGN section 9, generator.py).

    An 896 x 896 canvas with light clutter holds red squares near the centres of three cells of a
    4 x 4 grid (224 px cells), each with a digit 60-68 px tall; the question names the cell to read
    by row and column and gives its box. The model sees the canvas at 112 x 112, where a digit is ~8 px
    tall with 1 px strokes, and can `zoom_in` on a cell, which it then sees at 112 x 112 (digit 30-34 px,
    centred). The find variant (`names_cell: false`, `red_squares: 1`, `full_view: 224`; `demo_find.yaml`)
    has one red square and a question that names nothing: the model finds the square in the full view.
    Tasks are drawn from seeds derived from (split, index, seed): deterministic, and train and test
    never share a seed.

    `task.metadata`: `target_box` (the asked red square), `cell_box` (its grid cell), `glyph_box`
    (the digit's ink), all `[x1, y1, x2, y2]` in canvas pixels; `target_cell` (1-16, row-major),
    `other_squares` ([cell, digit] of the others), `seed`.
    """

    name = "visual-search"
    description = "Read a digit that is only legible after zooming into the red square's grid cell."
    tool_names = ("zoom_in",)

    def __init__(
        self,
        config: VisualSearchConfig | dict[str, Any] | None = None,
        *,
        budget: VisualBudget | None = None,
        tools: ToolRegistry | None = None,
        rubric: Rubric | None = None,
        allow_tools: bool = True,
        tool_timeout_s: float = DEFAULT_TIMEOUT_S,
    ):
        self.config = config if isinstance(config, VisualSearchConfig) else VisualSearchConfig.model_validate(config or {})
        super().__init__(budget=budget, tools=tools, rubric=rubric, allow_tools=allow_tools, tool_timeout_s=tool_timeout_s)

    # ---- override points -------------------------------------------------------------------

    def default_budget(self) -> VisualBudget:
        # Full view 112 px: 8x smaller than the canvas, one 28 px token per grid cell, the 60-68 px
        # digit becomes 8 px with 1 px strokes. Zooms are shown at 112 px too: a zoom on the cell halves it
        # and the digit (30-34 px) sits at the view's centre, which is what the tiny model learns to read
        # (BENCHMARKS.md, perception probes); a loose box shrinks it and moves it off-centre.
        # The find variant sets `full_view: 224`: at 112 px the tiny model did not learn to locate the square
        # (BENCHMARKS.md, "Finding the square"), at 224 px the digit is still 15-17 px and unread.
        side = self.config.full_view
        return VisualBudget(
            max_turns=3, max_images=3, max_pixels_per_image=112 * 112, max_pixels_per_task_image=side * side
        )

    def default_rubric(self) -> Rubric:
        return search_rubric("exact", tool_bonus=self.config.tool_bonus, tool_cost=self.config.tool_cost)

    def eval_protocol(self) -> EvalProtocol:
        return EvalProtocol(columns=(
            EvalColumn("needless_zooms", "needless zooms / traj"),
            EvalColumn("zoom_cell_iou", "zoom IoU (cell)", tool_users_only=True),
        ))

    def load_tasks(self, split: str = "train", n: int | None = None, seed: int = 0) -> GeneratedTasks:
        """A lazy, read-only list of `n` tasks (default: `config.train_size` / `test_size`)."""
        parse_split(split, self.splits)
        if n is None:
            n = self.config.train_size if split == "train" else self.config.test_size
        return GeneratedTasks(lambda i: self.make_task(split, i, seed), n)

    def make_task(self, split: str, index: int, seed: int = 0) -> Task:
        """Task `index` of `split` (the same pixels every time)."""
        s = task_seed(split, index, seed)
        scene = generate(s, self.config)
        config = self.config
        return Task(
            id=f"{self.name}-{split}-{seed}-{index}",
            question=question_for(scene.cell, self.config.grid, scene.cell_box, self.config.names_cell),
            # The canvas is drawn again from its seed when needed: a task row holds no decoded pixels.
            images=[ImagePart.from_source(scene.image, lambda: generate(s, config).image)],
            answer=str(scene.digit),
            split=split,
            metadata={
                "seed": s,
                "index": index,
                "target_box": [float(v) for v in scene.target_box],
                "cell_box": [float(v) for v in scene.cell_box],
                "glyph_box": [float(v) for v in scene.glyph_box],
                "target_cell": scene.cell,
                "grid": self.config.grid,
                "decoy_cells": list(scene.decoys),
                "other_squares": [list(x) for x in scene.other_squares],
            },
        )

    def render_sample(self, task: Task) -> list[tuple[str, Image.Image]]:
        """The canvas with the target (green) and its cell (blue), the model's full view, and the
        zoomed cell as the model sees it."""
        canvas = task.images[0].pil
        marked = draw_box(draw_box(canvas, task.metadata["cell_box"], (40, 90, 230)), task.metadata["target_box"])
        cell = canvas.crop(tuple(int(v) for v in task.metadata["cell_box"]))
        return [("canvas", marked), ("full_view", self.budget.view(canvas, "task")), ("zoomed_cell", self.budget.view(cell, "tool"))]

    def render_task(self, task: Task) -> Image.Image:
        """`render_sample` as one panel."""
        return compose_panel(self.render_sample(task))
