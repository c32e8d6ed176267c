"""`hrbench`: HR-Bench 4K / 8K (Wang et al., AAAI 2025, `DreamMr/HR-Bench`) from its TSV, as distributed.

The file (`hr_bench_4k.tsv`, `hr_bench_8k.tsv` on the Hugging Face dataset DreamMr/HR-Bench, the files
VLMEvalKit's `HRBenchDataset` downloads) is a VLMEvalKit-style TSV with a header row. Columns, as read by
VLMEvalKit (`HRBenchDataset`, `utils/hrbench.py`), lmms-eval (`tasks/hrbench/utils.py`) and the HR-Bench
repository's own evaluation:

    index           row id (an integer)
    question        the question text
    A, B, C, D      the four option texts
    answer          the right option's letter
    category        "single" (FSP, fine-grained single-instance) or "cross" (FCP, cross-instance)
    cycle_category  which rotation of the options this row is: each question appears once per cycle
                    with its options rotated (the values are labels; only their grouping matters)
    image           the image, base64 (JPEG/PNG bytes); a cell of at most 64 characters is instead the
                    index of the row holding the image (VLMEvalKit's convention for shared images)

The protocol (docs/evaluation.md): the prompt is VLMEvalKit's `ImageMCQDataset.build_prompt`, which the
HR-Bench authors' evaluation uses ("Question: ...\\nOptions:\\nA. ...\\n...Please select the correct answer
from the options above. \\n"); the answer is scored per sample (`agent_grpo.rewards.choice`: VLMEvalKit's
matcher), accuracy is computed within each cycle and the published number is the mean over cycles (per
category likewise). HR-Bench does not use MMBench's circular rule (a question right only if every rotation
is right): each rotation counts as a sample.

Without `tsv`, the environment reads the self-made samples shipped in this package (`samples/`, made by
`python -m agent_grpo_envs.hrbench.make_samples`), so it works offline and in tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from agent_grpo.budget import VisualBudget
from agent_grpo.content import ImagePart
from agent_grpo.envs.api import Environment, EvalProtocol
from agent_grpo.errors import ImageError
from agent_grpo.images import load_image
from agent_grpo.rewards import Rubric
from agent_grpo.tools.registry import ToolRegistry
from agent_grpo.tools.runner import DEFAULT_TIMEOUT_S
from agent_grpo.trajectory import Task
from agent_grpo_envs._common import (
    DatasetError,
    GeneratedTasks,
    compose_panel,
    full_image_budget,
    parse_split,
    search_rubric,
)
from agent_grpo_envs.hrbench.tsv import TsvRows

SAMPLES = Path(__file__).parent / "samples"
SAMPLE_FILES = {"4k": SAMPLES / "hr_bench_4k_sample.tsv", "8k": SAMPLES / "hr_bench_8k_sample.tsv"}
REQUIRED = ("index", "question", "answer", "category", "A", "B", "C", "D", "image")
LETTERS = ("A", "B", "C", "D")
PROTOCOL = (
    "HR-Bench (VLMEvalKit HRBenchDataset): prompt 'Question: <q>\\nOptions:\\nA. <A>\\n...D. <D>\\nPlease select the "
    "correct answer from the options above.', the final answer inside <answer></answer>; the letter is extracted "
    "with VLMEvalKit's rules (agent_grpo.rewards.choice); accuracy per cycle_category, then the mean over cycles"
)


def build_prompt(question: str, options: dict[str, str]) -> str:
    """VLMEvalKit's `ImageMCQDataset.build_prompt` text for an HR-Bench row (no hint column)."""
    lines = "".join(f"{letter}. {text}\n" for letter, text in options.items())
    return f"Question: {question}\nOptions:\n{lines}Please select the correct answer from the options above. \n"


class HRBenchEnv(Environment):
    """HR-Bench multiple choice (A-D) on 4K / 8K images: look closer, answer a letter."""

    name = "hrbench"
    description = "HR-Bench 4K/8K: fine-grained single- and cross-instance questions about high-resolution images."
    tool_names = ("zoom_in",)
    splits = ("test",)

    def __init__(
        self,
        tsv: str | Path | None = None,
        *,
        version: Literal["4k", "8k"] = "4k",
        tool_bonus: float = 0.5,
        budget: VisualBudget | None = None,
        tools: ToolRegistry | None = None,
        rubric: Rubric | None = None,
        allow_tools: bool = True,
        tool_timeout_s: float = DEFAULT_TIMEOUT_S,
    ):
        if version not in SAMPLE_FILES:
            raise ValueError(f"version must be one of {sorted(SAMPLE_FILES)}, got {version!r}")
        self.tsv = Path(tsv) if tsv is not None else SAMPLE_FILES[version]
        self.tool_bonus = tool_bonus
        if not self.tsv.is_file():
            raise DatasetError(f"{self.tsv} not found: point tsv= at hr_bench_4k.tsv or hr_bench_8k.tsv "
                               "(from the Hugging Face dataset DreamMr/HR-Bench)")
        self._rows = TsvRows(self.tsv, REQUIRED, self._parse_row)
        super().__init__(budget=budget, tools=tools, rubric=rubric, allow_tools=allow_tools, tool_timeout_s=tool_timeout_s)

    # ---- override points -------------------------------------------------------------------

    def default_budget(self) -> VisualBudget:
        return full_image_budget(turns=5)  # as for V*: the full image plus a few zooms

    def default_rubric(self) -> Rubric:
        return search_rubric("choice", tool_bonus=self.tool_bonus, tool_cost=0.0)

    def eval_protocol(self) -> EvalProtocol:
        return EvalProtocol(category_key="category", average_over="cycle_category", description=PROTOCOL)

    def load_tasks(self, split: str = "test", n: int | None = None, seed: int = 0) -> GeneratedTasks:
        """The rows in file order (the first `n`); images are decoded when a task is indexed."""
        parse_split(split, self.splits)
        count = len(self._rows) if n is None else min(n, len(self._rows))
        return GeneratedTasks(lambda i: self._task(i, self._rows[i]), count)

    def render_task(self, task: Task):
        return compose_panel(self.render_sample(task))

    # ---- reading the benchmark ---------------------------------------------------------------

    def _parse_row(self, number: int, row: dict[str, str]) -> dict[str, Any]:
        where = f"{self.tsv}, row {number}"
        question = row["question"].strip()
        if not question:
            raise DatasetError(f"{where}: empty question")
        options = {letter: row[letter].strip() for letter in LETTERS if row[letter].strip()}
        letter = row["answer"].strip().strip("()").upper()
        if letter not in options:
            raise DatasetError(f"{where}: answer {row['answer']!r} is not one of the options {sorted(options)}")
        if not row["image"].strip():
            raise DatasetError(f"{where}: empty image cell (base64 image data or the index of a row holding it)")
        return {
            "where": where, "index": row["index"].strip(), "question": question, "options": options, "label": letter,
            "category": row["category"].strip(), "cycle": row.get("cycle_category", "").strip() or None,
        }

    def _task(self, i: int, row: dict[str, Any]) -> Task:
        metadata = {"choices": row["options"], "category": row["category"], "index": row["index"],
                    "source": row["where"]}
        if row["cycle"] is not None:
            metadata["cycle_category"] = row["cycle"]
        return Task(
            id=f"{self.name}-{row['index']}", question=build_prompt(row["question"], row["options"]),
            images=[self._image(i, row["where"])], answer=row["label"], split="test", metadata=metadata,
        )

    def _image(self, i: int, where: str) -> ImagePart:
        def load():
            try:
                return load_image(self._rows.image_bytes(i))
            except ImageError as e:
                raise DatasetError(f"{where}: the image is not a readable picture ({e}); re-download the TSV") from e

        return ImagePart.from_source(load(), load)
