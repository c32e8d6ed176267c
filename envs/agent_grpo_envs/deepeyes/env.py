"""`deepeyes`: DeepEyes' RL training data (Zheng et al. 2025, arXiv 2505.14362) as distributed.

The data is `ChenShawn/DeepEyes-Datasets-47k`: three parquet files in verl's RL layout,
`data_0.1.2_visual_toolbox_v2.parquet` (data_source "vstar": fine-grained perception),
`data_v0.8_visual_toolbox_v2.parquet` ("chart": large, high-resolution figures) and
`data_thinklite_reasoning_acc.parquet` ("thinklite_eureka": reasoning). Columns, as the public loaders
read them (verl's `RLHFDataset` in DeepEyes' fork: `prompt` key "prompt", image key "images",
`extra_info["index"]`; DeepEyes' `vl_agent.compute_score` and verl's `recipe/deepeyes` preprocessing:
`reward_model["ground_truth"]`, `extra_info["question"]`, `data_source`, `ability`):

    data_source    string                     which reward DeepEyes applies ("vstar", "chart", "thinklite_eureka")
    prompt         list<{role, content}>      chat messages; `<image>` in the user text marks each image
    images         list<{bytes, path}>        the images (`datasets.Image` structs; plain bytes or path
                                              strings are read too; a path is taken under `image_root`)
    reward_model   {ground_truth, style}      the reference answer
    extra_info     {index, question, ...}     optional; `question` is the question without the format text
    ability        string                     optional

Required: `prompt`, `images`, `reward_model`. The question shown is `extra_info["question"]` when it is a
string, else the last user message of `prompt` without its `<image>` markers. (DeepEyes' own prompt
describes their `image_zoom_in_tool`; here the model is given the `zoom_in` tool, with the same
arguments `bbox_2d` in original-image pixels and `label`, through the chat template's tool list.)

Lazy: opening reads the parquet footers only; a row group is read when one of its rows is indexed (rewrite
files with large groups once: `python -m agent_grpo_envs.deepeyes.regroup IN OUT`, 64 rows a group), and
images are decoded with the project's safe loader (EXIF, size limits) when a task is indexed, kept as
re-readable parts (`ImagePart.from_source`). A 50k-row file opens in constant memory.

Options (`env.options` in a config, keyword arguments here):

    data:          {split: file or [files]}   parquet per split ("train", "test"); default: the shipped samples
    image_root:    folder                     where image paths (rows without bytes) are found
    data_sources:  null | [names]             keep only rows of these data sources (e.g. [vstar] to leave out
                                              "chart", whose huge figures the verl recipe warns run out of memory);
                                              filtering reads the `data_source` column once
    reward:        match | judge              accuracy by match (default) or by an LLM judge (`judge` options go
                                              to the judge reward; see `judge_accuracy`). match: normalised exact
                                              match, and for rows of `math_sources` symbolic equivalence
                                              (math_verify; "\\frac{1}{2}" == "0.5"), as DeepEyes' rule check
    math_sources:  [thinklite_eureka, xince]  data sources whose answers are compared as math under `match`
    judge:         {...}                      options of the judge reward (endpoint, model, ...)
    tool_bonus:    1.2                        DeepEyes' conditional tool bonus: paid when the answer is right AND a
                                              tool call succeeded (without it the model stops calling tools)
    verify_images: false                      true: decode every image when the split is loaded (see below)

Rubric: 0.8 x accuracy + 0.2 x format + tool_bonus x [correct and a tool call succeeded] (DeepEyes' vstar
and chart reward). Departures: format is the per-turn fraction, not DeepEyes' 0/-1 penalty; all rows share
one rubric (DeepEyes gives "thinklite_eureka" 1.2 x accuracy + 0.4 x format and no tool bonus).

Bad data: a missing column is refused at open (naming the file and the columns it has); a malformed row or
an undecodable image raises `DatasetError` naming file, row and fix when that task is indexed, before any
rollout of it starts (the run stops with that message; nothing stored is lost). `verify_images: true`
decodes every image at open instead, to find all bad rows up front (slow for large files).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agent_grpo.budget import VisualBudget
from agent_grpo.content import ImagePart
from agent_grpo.envs.api import Environment
from agent_grpo.errors import ImageError
from agent_grpo.images import load_image
from agent_grpo.paths import UnsafePathError, contained_path
from agent_grpo.rewards import (
    HACKING_METRICS,
    RewardFn,
    Rubric,
    conditional_tool_bonus,
    exact_match,
    format_reward,
    math_equivalent,
    reward,
    zoom_precision,
)
from agent_grpo.tools.registry import ToolRegistry
from agent_grpo.tools.runner import DEFAULT_TIMEOUT_S
from agent_grpo.trajectory import Task, Trajectory
from agent_grpo_envs._common import (
    DatasetError,
    GeneratedTasks,
    check_data_splits,
    compose_panel,
    full_image_budget,
    parse_split,
)

if TYPE_CHECKING:
    from agent_grpo_envs.deepeyes.parquet_rows import ParquetRows

SAMPLES = Path(__file__).parent / "samples"
DEFAULT_DATA = {"train": SAMPLES / "train.parquet", "test": SAMPLES / "test.parquet"}
REQUIRED = ("prompt", "images", "reward_model")
OPTIONAL = ("data_source", "extra_info", "ability")
FIX = "DeepEyes rows need columns prompt, images and reward_model (verl's RL parquet layout; see the deepeyes docs)"
_IMAGE_MARK = re.compile(r"<image>\s*")


class DeepEyesConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    data: dict[str, Path | list[Path]] = Field(default_factory=lambda: dict(DEFAULT_DATA))
    image_root: Path | None = None
    data_sources: list[str] | None = None
    reward: Literal["match", "judge"] = "match"
    judge: dict[str, Any] = Field(default_factory=dict)
    tool_bonus: float = Field(default=1.2, ge=0)
    verify_images: bool = False
    math_sources: list[str] = Field(default_factory=lambda: ["thinklite_eureka", "xince"])


def match_accuracy(math_sources: list[str]) -> RewardFn:
    """Accuracy (weight 0.8) by normalised exact match; rows whose data_source is in `math_sources` by math
    equivalence (`math_equivalent`), which also accepts an answer matching exactly."""
    math_kinds = frozenset(math_sources)

    @reward("accuracy", weight=0.8)
    def match(traj: Trajectory) -> float:
        try:
            exact = exact_match(traj.answer, traj.task.answer)
            if exact or traj.task.metadata.get("data_source") not in math_kinds:
                return exact
            return math_equivalent(traj.answer, traj.task.answer)
        except ValueError as e:
            raise ValueError(f"task {traj.task.id!r}: {e}") from e

    return match


def judge_accuracy(options: dict[str, Any]) -> RewardFn:
    """The accuracy component for `reward: judge`: the LLM-judge reward of agent-grpo, weight 0.8.

    The one place the judge is connected: it must return a reward named "accuracy" (the tool bonus reads
    it) that records a judge failure as a reward error, never raises mid-run."""
    from agent_grpo.rewards.judge import judge_accuracy as llm_judge

    return llm_judge(options, name="accuracy", weight=0.8)


class DeepEyesEnv(Environment):
    """DeepEyes' training questions: look closer with zoom_in, answer in words; judged against the ground truth."""

    name = "deepeyes"
    description = "DeepEyes training data (verl parquet): thinking with images via zoom-in; accuracy + format + tool bonus."
    tool_names = ("zoom_in",)

    def __init__(
        self,
        data: dict[str, Any] | None = None,
        image_root: str | Path | None = None,
        data_sources: list[str] | None = None,
        reward: str = "match",
        judge: dict[str, Any] | None = None,
        tool_bonus: float = 1.2,
        verify_images: bool = False,
        math_sources: list[str] | None = None,
        *,
        budget: VisualBudget | None = None,
        tools: ToolRegistry | None = None,
        rubric: Rubric | None = None,
        allow_tools: bool = True,
        tool_timeout_s: float = DEFAULT_TIMEOUT_S,
    ):
        options: dict[str, Any] = {"image_root": image_root, "data_sources": data_sources, "reward": reward,
                                   "judge": judge or {}, "tool_bonus": tool_bonus, "verify_images": verify_images}
        if math_sources is not None:
            options["math_sources"] = math_sources
        if data is not None:
            options["data"] = data
        self.config = DeepEyesConfig.model_validate(options)
        check_data_splits(self.config.data, self.splits)
        super().__init__(budget=budget, tools=tools, rubric=rubric, allow_tools=allow_tools, tool_timeout_s=tool_timeout_s)

    # ---- override points -------------------------------------------------------------------

    def default_budget(self) -> VisualBudget:
        return full_image_budget(turns=6)  # DeepEyes: up to 6 turns, the image plus several zooms

    def default_rubric(self) -> Rubric:
        if self.config.reward == "judge":
            acc = judge_accuracy(self.config.judge)
        else:
            acc = match_accuracy(self.config.math_sources)
        return Rubric(
            [acc, format_reward.with_weight(0.2), conditional_tool_bonus(weight=self.config.tool_bonus)],
            metrics=[*HACKING_METRICS, zoom_precision],
        )

    def load_tasks(self, split: str = "train", n: int | None = None, seed: int = 0) -> GeneratedTasks:
        """The rows of `data[split]` in file order (the first `n` after `data_sources`); read when indexed."""
        parse_split(split, self.splits)
        if split not in self.config.data:
            raise DatasetError(f"no data for split {split!r}: set env.options.data.{split} to DeepEyes parquet file(s)")
        paths = self.config.data[split]
        paths = paths if isinstance(paths, list) else [paths]
        for path in paths:
            if not Path(path).is_file():
                raise DatasetError(f"deepeyes data for split {split!r} not found: {path}")
        from agent_grpo_envs.deepeyes.parquet_rows import ParquetRows  # pyarrow, imported when data is read

        rows = ParquetRows(paths, self._columns(paths), fix=FIX)
        index = self._selected(rows, paths)
        count = len(rows) if index is None else len(index)
        count = count if n is None else min(n, count)
        pick = (lambda i: i) if index is None else (lambda i: int(index[i]))
        tasks = GeneratedTasks(lambda i: self._task(rows, pick(i), split), count, source=", ".join(map(str, paths)))
        tasks.rows = rows  # the reader behind them: `rows_read` counts the parquet rows read so far
        if self.config.verify_images:
            for i in range(count):
                tasks[i]  # noqa: B018 - building a task decodes its images: a bad one fails now, naming its row
        return tasks

    def render_task(self, task: Task):
        return compose_panel(self.render_sample(task))

    # ---- reading the parquet -----------------------------------------------------------------

    def _columns(self, paths: list[Path]) -> list[str]:
        """The required columns and whichever optional ones the first file has (the others must match)."""
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(paths[0]).names
        except Exception as e:  # pyarrow raises several types for a file that is not parquet
            raise DatasetError(f"cannot read {paths[0]} as parquet: {e}") from e
        return [*REQUIRED, *(c for c in OPTIONAL if c in names)]

    def _selected(self, rows: ParquetRows, paths: list[Path]) -> np.ndarray | None:
        """Global indices of the rows whose data_source is kept, or None to keep all."""
        keep = self.config.data_sources
        if keep is None:
            return None
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        parts = []
        for path in paths:
            table = pq.read_table(path, columns=["data_source"]) if "data_source" in rows.columns else None
            if table is None:
                raise DatasetError(f"{path}: data_sources filter set, but the file has no data_source column")
            parts.append(pc.is_in(table.column("data_source"), value_set=pa.array(keep, type=pa.string())).to_numpy(zero_copy_only=False))
        return np.flatnonzero(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

    def _task(self, rows: ParquetRows, i: int, split: str) -> Task:
        where = rows.where(i)
        row = rows[i]
        extra = row.get("extra_info") if isinstance(row.get("extra_info"), dict) else {}
        question = _question(row["prompt"], extra, where)
        answer = _ground_truth(row["reward_model"], where)
        images = row["images"]
        if not isinstance(images, list) or not images:
            raise DatasetError(f"{where}: 'images' must be a non-empty list of images; fix or drop the row")
        parts = [self._image(rows, i, k, where) for k in range(len(images))]
        metadata = {"source": where, "row": i}
        for key in ("data_source", "ability"):
            if isinstance(row.get(key), str):
                metadata[key] = row[key]
        if "index" in extra:
            metadata["index"] = extra["index"]
        return Task(id=f"{self.name}-{split}-{i}", question=question, images=parts, answer=answer, split=split,
                    metadata=metadata)

    def _image(self, rows: ParquetRows, i: int, k: int, where: str) -> ImagePart:
        def load():
            return self._decode(rows[i]["images"][k], f"{where}, image {k}")

        return ImagePart.from_source(load(), load)

    def _decode(self, item: Any, where: str):
        source: bytes | Path
        if isinstance(item, dict) and item.get("bytes"):
            source = item["bytes"]
        elif isinstance(item, bytes | bytearray) and item:
            source = bytes(item)
        else:
            path = item.get("path") if isinstance(item, dict) else item
            if not isinstance(path, str) or not path:
                raise DatasetError(f"{where}: an image needs bytes or a path, got {_short(item)}; fix or drop the row")
            if self.config.image_root is None:
                raise DatasetError(f"{where}: the image is a path ({path!r}) without bytes; set env.options.image_root "
                                   "to the folder it is relative to")
            try:
                source = contained_path(Path(self.config.image_root), path)
            except UnsafePathError as e:
                raise DatasetError(f"{where}: {e}") from e
        try:
            return load_image(source)
        except ImageError as e:
            raise DatasetError(f"{where}: {e}; re-encode the image or drop the row") from e


def _question(prompt: Any, extra: dict[str, Any], where: str) -> str:
    q = extra.get("question")
    if isinstance(q, str) and q.strip():
        return _IMAGE_MARK.sub("", q).strip()
    if not isinstance(prompt, list):
        raise DatasetError(f"{where}: 'prompt' must be a list of chat messages, got {_short(prompt)}")
    users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise DatasetError(f"{where}: 'prompt' has no user message; fix or drop the row")
    content = users[-1].get("content")
    if isinstance(content, list):  # OpenAI-style parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    text = _IMAGE_MARK.sub("", content).strip() if isinstance(content, str) else ""
    if not text:
        raise DatasetError(f"{where}: the user message of 'prompt' has no question text; fix or drop the row")
    return text


def _ground_truth(value: Any, where: str) -> str | list[str]:
    truth = value.get("ground_truth") if isinstance(value, dict) else None
    if isinstance(truth, str) and truth.strip():
        return truth.strip()
    if isinstance(truth, list) and truth and all(isinstance(t, str) and t.strip() for t in truth):
        return [t.strip() for t in truth]
    raise DatasetError(f"{where}: 'reward_model' needs a non-empty 'ground_truth' string, got {_short(value)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:120] + "..."

