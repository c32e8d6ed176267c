"""The one trajectory type, and the task rows and tool records it is made of.

All JSON-serialisable pydantic models (no pickle). Token-level data lives in `segments`:
prompt tokens, sampled tokens with their sampling logprobs (trained on), and injected tokens
(tool results, images, budget notices; never trained on). Sampled text is never re-tokenised.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent_grpo.content import ContentPart, ImagePart, Message
from agent_grpo.images import image_size_problem

Answer = str | float | list[float] | None


class Task(BaseModel):
    """An immutable task row: the question, its images and the reference answer."""

    model_config = ConfigDict(frozen=True)

    id: str
    question: str
    images: list[ImagePart] = Field(default_factory=list)
    answer: Answer = None
    split: str = "train"
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_images(self) -> Task:
        # A task image the model cannot be shown fails when the data is loaded, not mid-rollout at `start`.
        for i, img in enumerate(self.images):
            problem = image_size_problem(img.width, img.height)
            if problem is not None:
                raise ValueError(f"task {self.id!r}: image {i} cannot be used: {problem}")
        return self


class ToolErrorKind(StrEnum):
    """Why a tool call produced an error observation instead of a result."""

    PARSE = "parse"  # the <tool_call> body is not valid JSON / not {"name", "arguments"}
    UNKNOWN_TOOL = "unknown_tool"
    INVALID_ARGUMENTS = "invalid_arguments"  # schema violation
    BAD_BOX = "bad_box"  # degenerate, out-of-image or too small box
    BAD_IMAGE = "bad_image"  # refers to an observation that does not exist
    EXCEPTION = "exception"  # the tool raised
    TIMEOUT = "timeout"
    BUDGET = "budget"  # the visual budget does not allow another image


class ToolCall(BaseModel):
    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    raw: str = Field(description="the text between <tool_call> and </tool_call>, as sampled")
    parse_error: str | None = None


class ToolResult(BaseModel):
    call_id: str
    name: str
    content: list[ContentPart] = Field(default_factory=list)
    error: str | None = None
    error_kind: ToolErrorKind | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def images(self) -> list[ImagePart]:
        return [p for p in self.content if isinstance(p, ImagePart)]


class Termination(StrEnum):
    ANSWERED = "answered"
    NO_ACTION = "no_action"  # a turn with neither a tool call nor an answer
    MAX_TURNS = "max_turns"
    BUDGET = "budget_exhausted"  # images / visual tokens used up and the model still did not answer
    TRUNCATED = "truncated"  # token limit hit mid-turn
    ERROR = "error"  # unrecoverable environment error (recorded, never raised into the run)


class Turn(BaseModel):
    """One model turn and what the environment did with it."""

    index: int
    text: str = Field(description="the sampled text of this turn, as decoded")
    think: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    answer: str | None = None
    results: list[ToolResult] = Field(default_factory=list)
    notices: list[str] = Field(default_factory=list, description="budget/format notices shown to the model")
    truncated: bool = False
    format_ok: bool = True


class Segment(BaseModel):
    """A run of tokens of one kind. Only `sampled` segments carry loss (mask 1)."""

    kind: Literal["prompt", "sampled", "injected"]
    token_ids: list[int]
    logprobs: list[float] | None = Field(default=None, description="sampling logprobs, sampled segments only")
    turn: int = 0


class Trajectory(BaseModel):
    id: str
    task: Task
    env: str
    group_id: str
    sample_index: int = 0
    step: int | None = None
    policy_version: int | None = Field(
        default=None, description="optimizer updates applied to the weights that sampled it (None: not recorded)"
    )
    messages: list[Message] = Field(default_factory=list)
    turns: list[Turn] = Field(default_factory=list)
    images: list[ImagePart] = Field(default_factory=list, description="every image, by observation index")
    segments: list[Segment] = Field(default_factory=list)
    rewards: dict[str, float] = Field(default_factory=dict, description="unweighted reward by component")
    reward_errors: dict[str, str] = Field(
        default_factory=dict, description="components that could not score this trajectory, with why (rubric.py)"
    )
    reward: float = 0.0
    advantage: float | None = None
    termination: Termination | None = None
    metrics: dict[str, float] = Field(default_factory=dict)

    @property
    def answer(self) -> str | None:
        for turn in reversed(self.turns):
            if turn.answer is not None:
                return turn.answer
        return None

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [c for t in self.turns for c in t.tool_calls]

    @property
    def tool_results(self) -> list[ToolResult]:
        return [r for t in self.turns for r in t.results]

    @property
    def num_tool_calls(self) -> int:
        return len(self.tool_calls)

    @property
    def num_failed_calls(self) -> int:
        return sum(1 for r in self.tool_results if not r.ok)
