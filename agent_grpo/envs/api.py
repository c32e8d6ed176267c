"""The environment-authoring API.

An environment is one small class: a name, the tools it offers, its task rows, its rubric. The
lifecycle methods `start`, `step`, `finish`, `close` are fixed (do not override them); they call the
small override points below (`load_tasks`, `prompt`, `default_rubric`, `on_start`, ...).

    class Counting(Environment):
        name = "counting"
        tool_names = ("zoom_in",)

        def load_tasks(self, split, n=None, seed=0):
            return [Task(id=..., question=..., images=[...], answer="3")]

        def default_rubric(self):
            return Rubric([format_reward.with_weight(0.2), accuracy("exact").with_weight(0.8)])

Per-trajectory state lives in an `Episode`: the trajectory being built, the budget spent, each tool's
own state, and `data`, a dict for the environment's own bookkeeping.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from PIL import Image

from agent_grpo.boxes import Box
from agent_grpo.budget import BudgetUsage, VisualBudget
from agent_grpo.content import ImagePart, Message, TextPart
from agent_grpo.parsing import parse_turn
from agent_grpo.rewards.rubric import Rubric
from agent_grpo.tools.api import ToolContext
from agent_grpo.tools.isolation import ToolWorkers
from agent_grpo.tools.registry import ToolRegistry, load_tools
from agent_grpo.tools.runner import DEFAULT_TIMEOUT_S, ToolJob, ToolRun, run_tool_calls
from agent_grpo.trajectory import Task, Termination, ToolErrorKind, ToolResult, Trajectory, Turn

DEFAULT_SYSTEM_PROMPT = (
    "You are a careful visual assistant. Think step by step inside <think></think>. "
    "If a detail is too small to see, call a tool to look closer; each tool result comes back as a new image. "
    "When you are sure, give the final answer inside <answer></answer>."
)

LAST_TURN_NOTICE = "This is your last turn: answer now inside <answer></answer>."
BUDGET_NOTICE = "Visual budget exhausted: no more images can be shown. Answer now inside <answer></answer>."


@dataclass(frozen=True)
class EvalColumn:
    """One extra column of `agent-grpo eval`'s results: the mean of a trajectory metric the rubric logs."""

    metric: str  # key of `Trajectory.metrics`
    label: str  # the table's header
    tool_users_only: bool = False  # mean over trajectories with a tool call (a zoom's IoU), else over all


@dataclass(frozen=True)
class EvalProtocol:
    """How `agent-grpo eval` reports an environment (`Environment.eval_protocol`).

    `category_key` names the `task.metadata` field holding a task's category (the per-category table);
    with `average_over`, the headline and per-category accuracies are the mean, over the groups of that
    metadata field, of each group's accuracy (HR-Bench averages its option-rotation cycles this way)."""

    columns: tuple[EvalColumn, ...] = ()
    category_key: str = "category"
    average_over: str | None = None
    description: str = ""  # the prompt and the scoring, in words (stored with the results)


@dataclass
class Episode:
    """The mutable state of one trajectory while it runs."""

    trajectory: Trajectory
    budget: VisualBudget
    usage: BudgetUsage = field(default_factory=BudgetUsage)
    tool_states: dict[str, dict[str, Any]] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)  # the environment's own per-trajectory state
    budget_notice_sent: bool = False
    done: bool = False

    @property
    def task(self) -> Task:
        return self.trajectory.task

    @property
    def images(self) -> list[ImagePart]:
        return self.trajectory.images


class Environment:
    """Base class of task environments. Override the hooks, never the lifecycle methods."""

    name: ClassVar[str] = "environment"
    description: ClassVar[str] = ""
    tool_names: ClassVar[tuple[str, ...]] = ()
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    system_prompt: ClassVar[str] = DEFAULT_SYSTEM_PROMPT

    def __init__(
        self,
        budget: VisualBudget | None = None,
        tools: ToolRegistry | None = None,
        rubric: Rubric | None = None,
        allow_tools: bool = True,
        tool_timeout_s: float = DEFAULT_TIMEOUT_S,
    ):
        self.budget = budget or self.default_budget()
        names = self.tool_names if allow_tools else ()
        self.tools = (tools if tools is not None else load_tools()).subset(names)
        self.rubric = rubric or self.default_rubric()
        self.tool_timeout_s = tool_timeout_s
        self._pool: ToolWorkers | None = None  # tool worker processes, started on the first tool call

    @property
    def pool(self) -> ToolWorkers:
        if self._pool is None:
            self._pool = ToolWorkers(max_workers=4)
        return self._pool

    # ---- override points -------------------------------------------------------------------

    def load_tasks(self, split: str = "train", n: int | None = None, seed: int = 0) -> Sequence[Task]:
        """Immutable task rows of a split (n of them if given). Must be deterministic for a seed.

        May return a lazy sequence (generated environments build each task on access)."""
        raise NotImplementedError(f"{type(self).__name__} must implement load_tasks")

    def default_rubric(self) -> Rubric:
        raise NotImplementedError(f"{type(self).__name__} must implement default_rubric")

    def default_budget(self) -> VisualBudget:
        return VisualBudget()

    def prompt(self, task: Task, images: list[ImagePart]) -> list[Message]:
        """The opening messages. Default: system prompt, then the images and the question."""
        content: list[TextPart | ImagePart] = []
        for img in images:
            content += [TextPart(text=f"Image {img.observation} ({img.width}x{img.height}): "), img, TextPart(text="\n")]
        content.append(TextPart(text=task.question))
        return [Message.text("system", self.system_prompt), Message(role="user", content=content)]

    def format_result(self, result: ToolResult) -> list[TextPart | ImagePart]:
        """How one tool result is shown to the model (inside a tool message). One line per part."""
        if result.error is not None:
            return [TextPart(text=f"Error from {result.name or 'tool call'}: {result.error}\n")]
        parts: list[TextPart | ImagePart] = []
        text = next((p.text for p in result.content if isinstance(p, TextPart)), None)
        if text:
            parts.append(TextPart(text=text.rstrip() + "\n"))
        for img in result.images:
            parts += [TextPart(text=f"Image {img.observation} ({img.width}x{img.height}): "), img, TextPart(text="\n")]
        return parts

    def render_sample(self, task: Task) -> list[tuple[str, Image.Image]]:
        """Named pictures of a task for `agent-grpo envs show`. Default: each image and the model's view of it."""
        pictures = []
        for i, img in enumerate(task.images):
            view = self.budget.view(img.pil, "task")
            pictures += [(f"image{i}_original", img.pil), (f"image{i}_model_view", view)]
        return pictures

    def eval_protocol(self) -> EvalProtocol:
        """How evaluation reports this environment: extra metric columns, the category field, the
        averaging. Default: no extra columns, categories from `task.metadata["category"]` if present."""
        return EvalProtocol()

    def on_start(self, episode: Episode) -> None:
        """Called once a trajectory's prompt is built."""

    def on_finish(self, episode: Episode) -> None:
        """Called when a trajectory ends, before scoring; may add metrics (e.g. zoom precision)."""

    def on_close(self, episode: Episode) -> None:
        """Release whatever `on_start` acquired."""

    # ---- fixed lifecycle ---------------------------------------------------------------------

    def start(
        self, task: Task, group_id: str | None = None, sample_index: int = 0, trajectory_id: str | None = None
    ) -> Episode:
        """Begin a trajectory: admit the task images and build the prompt."""
        traj = Trajectory(
            id=trajectory_id or uuid.uuid4().hex[:16], task=task, env=self.name,
            group_id=group_id or task.id, sample_index=sample_index,
        )
        ep = Episode(trajectory=traj, budget=self.budget)
        images = [self._admit_task_image(ep, img) for img in task.images]
        traj.messages = self.prompt(task, images)
        self.on_start(ep)
        return ep

    def step(self, episode: Episode, text: str, truncated: bool = False) -> list[Message]:
        """Apply one model turn. Returns the messages to show the model next (empty once done)."""
        if episode.done:
            raise ValueError(f"trajectory {episode.trajectory.id} has already ended")
        traj = episode.trajectory
        episode.usage.turns += 1
        parsed = parse_turn(text, call_id_prefix=f"t{len(traj.turns)}")
        turn = Turn(
            index=len(traj.turns), text=text, think=parsed.think, tool_calls=parsed.tool_calls,
            answer=parsed.answer, truncated=truncated, format_ok=parsed.format_ok and not truncated,
        )
        traj.turns.append(turn)
        traj.messages.append(Message.text("assistant", text))

        if truncated:
            return self._end(episode, Termination.TRUNCATED)
        if parsed.answer is not None:
            return self._end(episode, Termination.ANSWERED)
        if not parsed.tool_calls:
            return self._end(episode, Termination.NO_ACTION)
        if episode.usage.turns >= self.budget.max_turns:
            return self._end(episode, Termination.MAX_TURNS)
        if episode.budget_notice_sent:
            return self._end(episode, Termination.BUDGET)  # told to answer, called tools again

        runs = run_tool_calls(
            [self._job(episode, call) for call in parsed.tool_calls], self.tools, self.tool_timeout_s, self.pool
        )
        turn.results = [self._admit_run(episode, run) for run in runs]
        observation: list[TextPart | ImagePart] = []
        for result in turn.results:
            observation.extend(self.format_result(result))
        refused = any(r.error_kind == ToolErrorKind.BUDGET for r in turn.results)
        if refused or self._budget_exhausted(episode):
            episode.budget_notice_sent = True
            turn.notices.append(BUDGET_NOTICE)
        elif episode.usage.turns == self.budget.max_turns - 1:
            turn.notices.append(LAST_TURN_NOTICE)
        observation.extend(TextPart(text=n + "\n") for n in turn.notices)
        if observation and isinstance(observation[-1], TextPart):  # the template adds the final newline
            observation[-1] = TextPart(text=observation[-1].text.rstrip("\n"))
        message = Message(role="tool", content=observation)
        traj.messages.append(message)
        return [message]

    def finish(self, episode: Episode) -> Trajectory:
        """End bookkeeping for one trajectory (scoring is per group: `score_group`)."""
        if not episode.done:
            self._end(episode, Termination.TRUNCATED)
        traj = episode.trajectory
        traj.metrics.update(
            turns=float(len(traj.turns)),
            tool_calls=float(traj.num_tool_calls),
            failed_tool_calls=float(traj.num_failed_calls),
            images=float(len(traj.images)),
            visual_tokens=float(episode.usage.visual_tokens),
        )
        self.on_finish(episode)
        return traj

    def stop(self, episode: Episode, reason: Termination) -> None:
        """End a trajectory from outside the environment (e.g. the driver's token limit)."""
        self._end(episode, reason)

    def score_group(self, group: list[Trajectory]) -> None:
        self.rubric.score(group)

    def close(self, episode: Episode) -> None:
        self.on_close(episode)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    # ---- internals ---------------------------------------------------------------------------

    def _end(self, episode: Episode, reason: Termination) -> list[Message]:
        episode.done = True
        episode.trajectory.termination = reason
        return []

    def _job(self, episode: Episode, call) -> ToolJob:
        ctx = ToolContext(images=list(episode.images), budget=self.budget, usage=episode.usage.model_copy())
        return ToolJob(call=call, context=ctx, states=episode.tool_states)

    def _budget_exhausted(self, episode: Episode) -> bool:
        smallest = self.budget.tokens_for(self.budget.token_side, self.budget.token_side)
        return (
            episode.usage.images_left(self.budget) <= 0
            or episode.usage.visual_tokens + smallest > self.budget.max_visual_tokens
        )

    def _admit_task_image(self, episode: Episode, image: ImagePart) -> ImagePart:
        # Stored at full resolution: tools crop the original pixels; the model sees a view
        # resized to the budget (`VisualBudget.view`), which is what the visual tokens count.
        obs = len(episode.images)
        part = image.with_provenance(observation=obs, source="task", root=obs)
        if part.box is None:
            part = part.with_provenance(box=Box(x1=0, y1=0, x2=part.width, y2=part.height))
        episode.usage.add_image(self.budget, part.width, part.height, "task")
        episode.images.append(part)
        return part

    def _admit_run(self, episode: Episode, run: ToolRun) -> ToolResult:
        """Turn a ToolRun into a ToolResult, admitting its images under the visual budget."""
        call = run.call
        result = ToolResult(call_id=call.id, name=call.name, error=run.error, error_kind=run.kind, duration_s=run.duration_s)
        if run.output is None:
            return result
        result.metrics = dict(run.output.metrics)
        if run.output.text:
            result.content.append(TextPart(text=run.output.text))
        # Check the whole output against the budget first: a tool's images are admitted all or none.
        # They are already RGB, capped in size and showable (`check_output` in the runner).
        pils = [out.image for out in run.output.images]
        trial = episode.usage.model_copy()
        for pil in pils:
            refusal = trial.can_add_image(self.budget, pil.width, pil.height)
            if refusal is not None:
                return ToolResult(
                    call_id=call.id, name=call.name, error=f"{refusal}; answer with what you have seen",
                    error_kind=ToolErrorKind.BUDGET, duration_s=run.duration_s,
                )
            trial.add_image(self.budget, pil.width, pil.height)
        for out, pil in zip(run.output.images, pils, strict=True):
            # Full resolution is kept (a zoom of a zoom needs it); only absurd sizes are capped.
            parent = episode.images[out.parent] if 0 <= out.parent < len(episode.images) else None
            part = ImagePart.from_pil(
                pil, observation=len(episode.images), source="tool", tool_call_id=call.id, tool_name=call.name,
                parent=out.parent, root=parent.root if parent else 0, box=out.box,
            )
            episode.usage.add_image(self.budget, part.width, part.height)
            episode.images.append(part)
            result.content.append(part)
        return result
