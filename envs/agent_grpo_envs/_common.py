"""Pieces shared by the built-in environments: split seeds, lazy task lists, rubric parts, panels."""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, overload

from PIL import Image, ImageDraw

from agent_grpo.boxes import Box
from agent_grpo.budget import VisualBudget
from agent_grpo.content import ImagePart
from agent_grpo.errors import AgentGrpoError, ImageError
from agent_grpo.images import load_image
from agent_grpo.paths import UnsafePathError, contained_path
from agent_grpo.rewards import (
    HACKING_METRICS,
    RewardFn,
    Rubric,
    accuracy,
    conditional_tool_bonus,
    format_reward,
    metric,
    reward,
    tool_regions,
    zoom_precision,
)
from agent_grpo.trajectory import Task, Trajectory

# Each split owns a residue class of task seeds, so train and test can never share a seed.
SPLIT_CODES = {"train": 0, "test": 1, "val": 2}
_SPLIT_BITS = 2
_INDEX_BITS = 32


def task_seed(split: str, index: int, base_seed: int = 0) -> int:
    """The generator seed of task `index` of `split`: distinct for every (split, index, base_seed)."""
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; use one of {sorted(SPLIT_CODES)}")
    if not 0 <= index < 2**_INDEX_BITS:
        raise ValueError(f"task index must be in [0, 2**32), got {index}")
    if base_seed < 0:
        raise ValueError(f"seed must be >= 0, got {base_seed}")
    return (base_seed << (_INDEX_BITS + _SPLIT_BITS)) | (index << _SPLIT_BITS) | SPLIT_CODES[split]


class GeneratedTasks(Sequence[Task]):
    """A read-only list of procedurally generated tasks, each drawn when it is indexed.

    Generation is deterministic, so nothing is cached: a 1,000-task split costs no memory until used.
    `list(tasks)` materialises it.
    """

    def __init__(self, make: Callable[[int], Task], n: int, source: str | None = None):
        if n < 0:
            raise ValueError(f"number of tasks must be >= 0, got {n}")
        self._make = make
        self._n = n
        self.source = source  # the file(s) the tasks come from, named when an index is out of range

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> Task: ...
    @overload
    def __getitem__(self, i: slice) -> list[Task]: ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._make(k) for k in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            where = f" of {self.source}" if self.source else ""
            raise IndexError(f"task index {i} out of range for {self._n} tasks{where}; use an index below {self._n}")
        return self._make(i)

    def __iter__(self) -> Iterator[Task]:
        return (self._make(k) for k in range(self._n))

    def __repr__(self) -> str:
        return f"GeneratedTasks(n={self._n})"


def zoom_boxes(traj: Trajectory, image: int = 0) -> list[Box]:
    """Boxes (in task image `image`'s pixels) of the regions that successful zoom/crop calls showed."""
    return [img.box for img, root in tool_regions(traj) if root.observation == image]


def coverage(box: Box, target: Box) -> float:
    """Fraction of `target` inside `box`."""
    ix = max(0.0, min(box.x2, target.x2) - max(box.x1, target.x1))
    iy = max(0.0, min(box.y2, target.y2) - max(box.y1, target.y1))
    return ix * iy / target.area if target.area > 0 else 0.0


def _metadata_box(traj: Trajectory, key: str) -> Box | None:
    value = traj.task.metadata.get(key)
    if value is None:
        return None
    try:
        return Box.from_list(value)
    except ValueError as e:
        raise ValueError(f"task {traj.task.id!r}: metadata[{key!r}] is not a box: {e}") from e


@metric("zoom_target_coverage")
def zoom_target_coverage(traj: Trajectory) -> float:
    """The largest share of `metadata["target_box"]` that one zoom showed; 0 without a zoom.

    1.0 means some zoom had the whole target in view, whatever its size (`zoom_precision` is the IoU).
    """
    target = _metadata_box(traj, "target_box")
    boxes = zoom_boxes(traj, traj.task.metadata.get("target_image", 0))
    if target is None or not boxes:
        return 0.0
    return max(coverage(b, target) for b in boxes)


@metric("zoom_cell_iou")
def zoom_cell_iou(traj: Trajectory) -> float:
    """The best IoU of a zoom with `metadata["cell_box"]`, the grid cell holding the target."""
    cell = _metadata_box(traj, "cell_box")
    boxes = zoom_boxes(traj, traj.task.metadata.get("target_image", 0))
    if cell is None or not boxes:
        return 0.0
    return max(b.iou(cell) for b in boxes)


def useful_zoom(box: Box, target: Box) -> bool:
    """A zoom that can serve the answer: it shows the whole target. (How legible the target is then is
    the accuracy reward's business: a needless-zoom price on loose zooms made guessing without looking
    pay better than zooming loosely, and tool use collapsed.)"""
    return coverage(box, target) >= 0.999


def count_needless_zooms(traj: Trajectory) -> float:
    """Tool calls beyond one useful zoom: extra zooms (failed ones included) and zooms that miss the target."""
    target = _metadata_box(traj, "target_box")
    if target is None:
        return 0.0
    boxes = zoom_boxes(traj, traj.task.metadata.get("target_image", 0))
    useful = any(useful_zoom(b, target) for b in boxes)
    return float(traj.num_tool_calls - (1 if useful else 0))


needless_zooms = metric("needless_zooms")(count_needless_zooms)


def zoom_efficiency(per_needless: float) -> RewardFn:
    """`-per_needless x needless_zooms`: the tool-efficiency reward (one well-placed zoom is free)."""

    def tool_efficiency(traj: Trajectory) -> float:
        n = count_needless_zooms(traj)
        return -per_needless * n if n else 0.0  # not -0.0 in the logs

    tool_efficiency.__doc__ = zoom_efficiency.__doc__
    return reward("tool_efficiency")(tool_efficiency)


def search_rubric(accuracy_kind: str, tool_bonus: float, tool_cost: float, **accuracy_opts) -> Rubric:
    """0.2 x format + 0.8 x accuracy + tool_bonus x [correct and a tool call succeeded]
    (+ `tool_cost` per needless zoom when > 0), logging the hacking metrics and zoom precision."""
    components = [
        accuracy(accuracy_kind, weight=0.8, **accuracy_opts),  # first: the tool bonus reads it
        format_reward.with_weight(0.2),
        conditional_tool_bonus(weight=tool_bonus),
    ]
    if tool_cost > 0:
        components.append(zoom_efficiency(per_needless=tool_cost))
    return Rubric(
        components, metrics=[*HACKING_METRICS, zoom_precision, zoom_target_coverage, zoom_cell_iou, needless_zooms]
    )


def draw_box(image: Image.Image, box: Box | list[float], color=(0, 200, 0), width: int = 3) -> Image.Image:
    """A copy of `image` with a rectangle drawn on it."""
    b = box if isinstance(box, Box) else Box.from_list(box)
    out = image.copy()
    ImageDraw.Draw(out).rectangle([b.x1, b.y1, b.x2 - 1, b.y2 - 1], outline=color, width=width)
    return out


def compose_panel(pictures: Sequence[tuple[str, Image.Image]], height: int = 448, gap: int = 8) -> Image.Image:
    """Pictures side by side, each scaled to `height` and titled with its real size.

    Enlarged pictures use nearest-neighbour resampling, so the model's pixels stay visible.
    """
    scaled = []
    for _, img in pictures:
        w = max(1, round(img.width * height / img.height))
        method = Image.Resampling.NEAREST if height >= img.height else Image.Resampling.LANCZOS
        scaled.append(img.convert("RGB").resize((w, height), method))
    title_h = 16
    width = sum(s.width for s in scaled) + gap * (len(scaled) + 1)
    panel = Image.new("RGB", (width, height + title_h + 2 * gap), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    x = gap
    for (name, original), img in zip(pictures, scaled, strict=True):
        draw.text((x, gap // 2), f"{name} ({original.width}x{original.height})", fill=(0, 0, 0))
        panel.paste(img, (x, title_h + gap))
        x += img.width + gap
    return panel


def full_image_budget(turns: int) -> VisualBudget:
    """`turns` turns and as many images, each within Qwen2.5-VL's usual 1,024-token image cap: the task image
    shown whole (up to 1024 x 28 x 28 pixels) plus a zoom a turn."""
    return VisualBudget(
        max_turns=turns, max_images=turns, max_pixels_per_image=1024 * 28 * 28, max_visual_tokens=turns * 1024
    )


def parse_split(split: str, splits: Sequence[str]) -> str:
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; this environment has {list(splits)}")
    return split


def check_data_splits(data: Mapping[str, Any], splits: Sequence[str]) -> None:
    """A `data` option (split -> file) may name only the environment's splits."""
    unknown = set(data) - set(splits)
    if unknown:
        raise ValueError(f"data: unknown split(s) {sorted(unknown)}; this environment has {list(splits)}")


class DatasetError(AgentGrpoError, ValueError):
    """A task file or one of its images is missing or malformed; the message names the file and line."""


def read_jsonl(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) for each non-blank line of a JSONL file; every row must be an object with `required` keys."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read task file {path}: {e}") from e
    rows = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            rows.append((number, _json_row(path, number, line, required)))
    return rows


def _json_row(path: Path, number: int, data: str | bytes, required: Sequence[str]) -> dict[str, Any]:
    try:
        row = json.loads(data)
    except ValueError as e:
        raise DatasetError(f"{path}, line {number}: not valid JSON ({e})") from e
    if not isinstance(row, dict):
        raise DatasetError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
    missing = [k for k in required if k not in row]
    if missing:
        raise DatasetError(f"{path}, line {number}: missing field(s) {missing}; a row needs {list(required)}")
    return row


class JsonlRows(Sequence[dict[str, Any]]):
    """The rows of a JSONL task file, read from disk when indexed: a split of any size opens in constant
    memory (8 bytes per row: where its line starts; its line number is kept only while lines are blank-free).

    Opening streams the file once and checks every row with `parse(number, row)` (which raises
    `DatasetError` naming file and line), so a bad row still fails at open; indexing reads the line
    again and returns `parse`'s result."""

    def __init__(self, path: Path, required: Sequence[str], parse: Callable[[int, dict[str, Any]], dict[str, Any]]):
        self.path, self.required, self.parse = Path(path), tuple(required), parse
        self._offsets, self._numbers = array("q"), array("q")
        try:
            with open(self.path, "rb") as f:
                offset = 0
                for number, line in enumerate(f, start=1):
                    if line.strip():
                        try:
                            line.decode("utf-8")
                        except UnicodeDecodeError as e:
                            raise DatasetError(f"cannot read task file {self.path}: {e}") from e
                        parse(number, _json_row(self.path, number, line, self.required))
                        self._offsets.append(offset)
                        self._numbers.append(number)
                    offset += len(line)
        except OSError as e:
            raise DatasetError(f"cannot read task file {self.path}: {e}") from e

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, i):
        if isinstance(i, slice):
            view = JsonlRows.__new__(JsonlRows)
            view.path, view.required, view.parse = self.path, self.required, self.parse
            view._offsets, view._numbers = self._offsets[i], self._numbers[i]
            return view
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} out of range for {len(self)} rows of {self.path}")
        with open(self.path, "rb") as f:
            f.seek(self._offsets[i])
            line = f.readline()
        number = self._numbers[i]
        return self.parse(number, _json_row(self.path, number, line, self.required))


def image_path(root: Path, value: Any, where: str) -> Path:
    """Resolve a row's relative image path under `root`; it must exist (decoding happens later, lazily)."""
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{where}: 'image' must be a relative path string, got {value!r}")
    try:
        path = contained_path(root, value)  # a dataset row may not name a file outside its folder
    except UnsafePathError as e:
        raise DatasetError(f"{where}: {e}") from e
    if not path.is_file():
        raise DatasetError(f"{where}: image file {path} does not exist")
    return path


def load_task_image(path: Path, where: str) -> ImagePart:
    """Decode an image (EXIF orientation, size limits) into a task image; errors name the row.

    The part keeps the path, not the pixels: they are decoded again when needed (`ImagePart.from_source`)."""
    try:
        return ImagePart.from_source(load_image(path), lambda: load_image(path))
    except ImageError as e:
        raise DatasetError(f"{where}: {e}") from e
