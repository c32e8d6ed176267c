"""Demonstrations for the SFT warm start, as trajectories with token segments.

Three sources (`SFTDataConfig.source`), one output: `Trajectory` objects whose `segments` are exactly
what the rollout driver would have produced, so SFT and GRPO train on identical token streams
(`rollout.batch.assemble_batch` then masks everything but the `sampled` segments):

- `scripted`: an environment's scripted policy played through `ScriptedEngine` + `RolloutDriver`,
  the very code path of RL rollouts. Sampled segments are the demo's assistant turns, injected
  segments the tool results. The policy is `module:function` with the signature of
  `scripted_turns(task, quality, rng) -> list[str]`; by default the
  environment's own package is asked for `scripted_turns`.
- `run`: a run directory (`RunStore`), filtered by index rows (correct, min reward, best per group).
  Stored segments are used as they are (checked against this model's tokenizer on one prompt);
  trajectories without segments, or all with `resegment`, are re-rendered.
- `export`: the `sft.jsonl` written by `agent-grpo replay export` (messages only): re-rendered.

Re-rendering (`render_segments`) repeats the driver's steps on stored messages: the prompt rendered
with the generation prompt; each assistant message's content encoded as a sampled segment; the text
the template adds up to the next generation prompt (checked to continue what came before) encoded
with its new images as an injected segment. Two differences from a live rollout are inherent to
messages-only data: a turn that ended with a sampled `<|im_end|>` (no tool call, no answer) loses that
token, and a real model's non-canonical tokenisation of its own text is not recovered.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent_grpo.budget import VisualBudget
from agent_grpo.content import ImagePart, Message, TextPart
from agent_grpo.envs.api import Environment
from agent_grpo.errors import StoreError
from agent_grpo.images import load_image
from agent_grpo.paths import contained_path
from agent_grpo.replay.filters import Filter, by_group
from agent_grpo.rollout.driver import RolloutConfig, RolloutDriver
from agent_grpo.rollout.engine import GenRequest, SamplingParams
from agent_grpo.rollout.scripted import ScriptedEngine
from agent_grpo.rollout.vision import VisionCache
from agent_grpo.store import IndexRow, RunStore, StoredRecord, image_parts
from agent_grpo.trajectory import Segment, Task, Termination, Trajectory

ScriptedPolicy = Callable[[Task, float, np.random.Generator], list[str]]

SCRIPTED_CHUNK_TASKS = 32  # tasks whose scripted demonstrations are played (and their pixels live) at once


class SFTDataConfig(BaseModel):
    """Where demonstrations come from and which are kept."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["scripted", "run", "export"] = Field(
        default="scripted", description="scripted policy on the environment, a run directory, or an sft.jsonl export"
    )
    path: Path | None = Field(default=None, description="run directory (run) or export folder / sft.jsonl (export)")
    policy: str | None = Field(
        default=None, description="scripted: 'module:function' (task, quality, rng) -> turns; None: the env's scripted_turns"
    )
    quality: float = Field(default=1.0, ge=0.0, le=1.0, description="scripted: 1 ideal; lower jitters boxes, answers wrong")
    demos_per_task: int = Field(default=1, ge=1, description="scripted: demonstrations per task (one group)")
    only_correct: bool = Field(default=False, description="keep trajectories whose accuracy is >= 0.5 (run, scripted)")
    best_per_group: bool = Field(default=False, description="keep the highest-reward member of each group (run, scripted)")
    min_reward: float | None = Field(default=None, description="keep trajectories with at least this reward")
    keep_truncated: bool = Field(default=False, description="also train on trajectories cut by a token limit")
    resegment: bool = Field(default=False, description="run: re-render even trajectories that carry token segments")
    eval_fraction: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="run/export: share of task ids held out for the eval loss"
    )
    max_total_tokens: int = Field(default=2048, ge=16, description="longest demonstration; longer ones are dropped")
    max_new_tokens: int = Field(default=256, ge=1, description="scripted: tokens per turn before a demo is cut")

    @model_validator(mode="after")
    def _check(self) -> SFTDataConfig:
        if self.source == "scripted" and self.path is not None:
            raise ValueError(f"data.path ({self.path}) is for source run/export; remove it or set data.source")
        if self.source != "scripted" and self.path is None:
            raise ValueError(f"data.source {self.source!r} needs data.path (a run directory or an export folder)")
        if self.source == "export" and (self.only_correct or self.best_per_group):
            raise ValueError(
                "sft.jsonl rows carry no correctness or group: select when exporting "
                "(agent-grpo replay export --correct --best-per-group) and unset data.only_correct/best_per_group"
            )
        if self.source != "run" and self.resegment:
            raise ValueError("data.resegment applies to source run only (other sources are always rendered)")
        if self.max_new_tokens >= self.max_total_tokens:
            raise ValueError(
                f"data.max_new_tokens ({self.max_new_tokens}) must be below data.max_total_tokens ({self.max_total_tokens})"
            )
        return self


@dataclass
class SFTData:
    """Training and held-out demonstrations, plus what happened on the way (for the run's summary)."""

    train: list[Trajectory]
    eval: list[Trajectory]
    counts: dict[str, int] = field(default_factory=dict)  # read, dropped by each rule, kept
    notes: list[str] = field(default_factory=list)  # things the user should know

    def summary(self) -> dict[str, Any]:
        def tokens(trajs, kind=None):
            return sum(len(s.token_ids) for t in trajs for s in t.segments if kind is None or s.kind == kind)

        return {**self.counts, "train": len(self.train), "eval": len(self.eval),
                "train_tokens": tokens(self.train), "train_trained_tokens": tokens(self.train, "sampled"),
                "eval_tokens": tokens(self.eval), "notes": self.notes}


# ---- rendering -----------------------------------------------------------------------------------


def render_segments(
    messages: Sequence[Message], chat, tools: list[dict] | None, budget: VisualBudget
) -> tuple[list[Segment], list[ImagePart]]:
    """Token segments of a stored conversation, built as `RolloutDriver` builds them live.

    Messages after the last assistant message were never shown to the model and are left out.
    Returns (segments, the image parts in the order their tokens appear). Sampled segments get
    logprob 0 (a demonstration is taken as given). Raises `ValueError` if there is no assistant
    message or the template is not prefix-preserving.
    """
    turns = [i for i, m in enumerate(messages) if m.role == "assistant"]
    if not turns:
        raise ValueError("the conversation has no assistant message: nothing to train on")

    vision = VisionCache(chat, budget)  # the driver's views: `budget.view` of each distinct image

    def views(msgs: Sequence[Message]) -> tuple[list, list[ImagePart]]:
        parts = [p for m in msgs for p in m.images]
        return [vision.view(p) for p in parts], parts

    rendered = chat.render(messages[: turns[0]], tools, add_generation_prompt=True)  # message text encoded literally
    text = rendered.text
    prompt_views, images = views(messages[: turns[0]])
    segments = [Segment(kind="prompt", token_ids=chat.encode(rendered, prompt_views), turn=0)]
    for turn, (i, nxt) in enumerate(zip(turns, [*turns[1:], None], strict=True)):
        if messages[i].images:
            raise ValueError(f"assistant message {i} holds an image; a model cannot write one")
        ids = chat.tokenizer.encode(messages[i].text_content, add_special_tokens=False)
        segments.append(Segment(kind="sampled", token_ids=ids, logprobs=[0.0] * len(ids), turn=turn))
        text += chat.decode(ids)
        if nxt is None:
            break
        rendered = chat.render(messages[:nxt], tools, add_generation_prompt=True)
        full = rendered.text
        if not full.startswith(text):
            raise ValueError(
                f"re-rendering message {i + 1} changed earlier text: the chat template is not prefix-preserving "
                "(use agent_grpo.models.chat.tools_chat_template())"
            )
        new_views, new_parts = views(messages[i + 1 : nxt])
        segments.append(Segment(kind="injected", token_ids=chat.encode(rendered.after(len(text)), new_views), turn=turn))
        images += new_parts
        text = full
    return segments, images


def resegmented(traj: Trajectory, chat, tools: list[dict] | None, budget: VisualBudget) -> Trajectory:
    """A copy of `traj` with segments (and images, in token order) rendered from its messages."""
    segments, images = render_segments(traj.messages, chat, tools, budget)
    return traj.model_copy(update={"segments": segments, "images": images})


# ---- sources -------------------------------------------------------------------------------------


def scripted_policy(env: Environment, spec: str | None) -> ScriptedPolicy:
    """The policy `module:function`, or `scripted_turns` of the package that defines the environment."""
    if spec is None:
        package = type(env).__module__.rpartition(".")[0] or type(env).__module__
        spec = f"{package}:scripted_turns"
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(
            f"no scripted policy {spec!r} for environment {env.name!r}: set data.policy to 'module:function' "
            "with the signature (task, quality, rng) -> list of model turns, or use data.source run/export"
        ) from e
    return fn


def scripted_demos(
    env: Environment, tasks: Sequence[Task], chat, policy: ScriptedPolicy, cfg: SFTDataConfig, seed: int, tag: str,
    chunk_tasks: int | None = None,
) -> list[Trajectory]:
    """Play `policy` on `tasks` through the rollout driver (scored per group, like RL).

    Tasks are played `chunk_tasks` at a time and each finished demonstration keeps its tool images as
    PNG bytes, not decoded (`release_pixels`; task images are lazy already), so memory does not grow with
    the number of demonstrations. Chunking changes nothing else: the scripted engine answers each request
    on its own and groups are scored on their own."""
    by_group_id: dict[str, Task] = {}
    turns: dict[str, list[str]] = {}

    def script(request: GenRequest) -> str:
        if request.key not in turns:
            group_id, _, k = request.key.rpartition("-")  # the driver names trajectories <group id>-<k>
            task = by_group_id[group_id]
            task_hash = int(hashlib.sha256(task.id.encode()).hexdigest()[:8], 16)
            turns[request.key] = policy(task, cfg.quality, np.random.default_rng([seed, task_hash, int(k)]))
        script_turns = turns[request.key]
        return script_turns[request.turn] if request.turn < len(script_turns) else ""

    rollout = RolloutConfig(group_size=cfg.demos_per_task, max_total_tokens=cfg.max_total_tokens,
                            sampling=SamplingParams(max_new_tokens=cfg.max_new_tokens))
    driver = RolloutDriver(env, ScriptedEngine(script, chat), chat, rollout)
    chunk_tasks = chunk_tasks or SCRIPTED_CHUNK_TASKS
    out: list[Trajectory] = []
    for start in range(0, len(tasks), chunk_tasks):
        chunk = list(tasks[start : start + chunk_tasks])  # a lazy split draws only these
        by_group_id = {f"{tag}{t.id}": t for t in chunk}
        turns.clear()
        demos = driver.rollout(chunk, tag=tag)
        for traj in demos:
            release_pixels(traj)
        out += demos
    return out


def release_pixels(traj: Trajectory) -> None:
    """Let every image of `traj` drop its decoded pixels (kept as PNG bytes or its own loader).

    Done in place: the same part is referenced from the images list, the messages and the tool results."""
    for part in traj.images:
        part.release_pixels()
    for part in traj.task.images:
        part.release_pixels()


def select_rows(rows: list[IndexRow], cfg: SFTDataConfig, counts: dict[str, int]) -> list[IndexRow]:
    """Apply the filters in order (correct, reward, truncation, best per group), counting drops."""

    def keep(name: str, kept: list[IndexRow], before: list[IndexRow]) -> list[IndexRow]:
        counts[f"dropped_{name}"] = counts.get(f"dropped_{name}", 0) + len(before) - len(kept)
        return kept

    if cfg.only_correct:
        rows = keep("not_correct", Filter(correct=True).apply(rows), rows)
    if cfg.min_reward is not None:
        rows = keep("low_reward", Filter(min_reward=cfg.min_reward).apply(rows), rows)
    if not cfg.keep_truncated:
        rows = keep("truncated", [r for r in rows if r.termination != Termination.TRUNCATED.value], rows)
    if cfg.best_per_group:
        rows = keep("not_best", [max(g, key=lambda r: r.reward) for g in by_group(rows).values()], rows)
    return rows


def select_trajectories(trajs: list[Trajectory], cfg: SFTDataConfig, counts: dict[str, int]) -> list[Trajectory]:
    rows = [IndexRow.of(StoredRecord(trajectory=t), 0, 0) for t in trajs]
    kept = {r.id for r in select_rows(rows, cfg, counts)}
    return [t for t in trajs if t.id in kept]


def load_run(
    path: Path, cfg: SFTDataConfig, chat, tools: list[dict] | None, budget: VisualBudget, counts: dict, notes: list
) -> list[Trajectory]:
    """Selected trajectories of a run directory, with pixels; segments as stored or re-rendered."""
    store = RunStore.open(path)
    rows = store.rows
    counts["read"] = len(rows)
    if store.meta.tool_schemas and store.meta.tool_schemas != (tools or []):
        notes.append(f"{path} was made with other tool schemas than the environment's; rendered prompts use the environment's")
    rows = select_rows(rows, cfg, counts)
    with_images = [r for r in rows if r.images_stored]
    counts["dropped_images_not_stored"] = len(rows) - len(with_images)
    out, as_stored = [], None
    for traj in store.iter(with_images):
        for part in image_parts(traj):  # read from the store when used, never all decoded at once
            store.images.attach_lazy(part)
        if cfg.resegment or not traj.segments:
            traj = resegmented(traj, chat, tools, budget)
        elif as_stored is None:
            as_stored = traj
        out.append(traj)
    if as_stored is not None:
        _check_stored_prompt(as_stored, chat, tools, budget, path)
    return out


def _check_stored_prompt(traj: Trajectory, chat, tools, budget: VisualBudget, path: Path) -> None:
    """Stored segments come from the run's tokenizer: a re-rendered prompt must match them exactly."""
    first = next(i for i, m in enumerate(traj.messages) if m.role == "assistant")
    expected, _ = render_segments(traj.messages[: first + 1], chat, tools, budget)
    if traj.segments[0].token_ids != expected[0].token_ids:
        raise ValueError(
            f"the token segments stored in {path} (e.g. {traj.id}) do not match this model's tokenizer, chat "
            "template and tools; set data.resegment: true to re-render them from their messages"
        )


def load_export(
    path: Path, chat, tools: list[dict] | None, budget: VisualBudget, counts: dict, notes: list
) -> list[Trajectory]:
    """Rows of an `sft.jsonl` (see `agent_grpo.replay.export`) as re-rendered trajectories."""
    folder, file = (path, path / "sft.jsonl") if path.is_dir() else (path.parent, path)
    if not file.is_file():
        raise StoreError(f"{file} does not exist; point data.path at a folder written by `agent-grpo replay export`")
    meta_file = folder / "export_meta.json"
    if meta_file.is_file():
        exported_tools = json.loads(meta_file.read_text()).get("tools")
        if exported_tools and exported_tools != (tools or []):
            notes.append(f"{file} was made with other tool schemas than the environment's; rendered prompts use the environment's")
    out = []
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            messages = _messages(row["messages"], folder)
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise StoreError(f"{file}, line {n}: not an SFT row: {e}") from e
        task_id = str(row.get("task_id", f"row{n}"))
        user = next((m.text_content for m in messages if m.role == "user"), "")
        traj = Trajectory(
            id=str(row.get("id", f"row{n}")), task=Task(id=task_id, question=user), env=str(row.get("env", "")),
            group_id=task_id, messages=messages, reward=float(row.get("reward", 0.0)),
        )
        out.append(resegmented(traj, chat, tools, budget))
    counts["read"] = len(out)
    return out


def _messages(raw: list[dict], folder: Path) -> list[Message]:
    """Export messages as `Message`s with pixels; images in system/user turns are task images."""
    messages, observation = [], 0
    for m in raw:
        parts: list[TextPart | ImagePart] = []
        for p in m["content"]:
            if p["type"] == "text":
                parts.append(TextPart(text=p["text"]))
                continue
            source = "tool" if m["role"] == "tool" else "task"
            path = contained_path(folder, p["image"])  # never a file outside the export folder
            # The row keeps the path: pixels are decoded again when used (checked against the hash).
            parts.append(ImagePart.from_source(load_image(path), functools.partial(load_image, path),
                                               observation=observation, source=source))
            observation += 1
        messages.append(Message(role=m["role"], content=parts))
    return messages


# ---- everything together -----------------------------------------------------------------------


def load_sft_data(cfg: SFTDataConfig, env: Environment, chat, *, train_split: str = "train",
                  eval_split: str = "test", num_train_tasks: int | None = None, num_eval_tasks: int = 64,
                  seed: int = 0) -> SFTData:
    """Training and held-out demonstrations for `cfg`, rendered for `chat` and `env`'s tools and budget.

    Scripted demos are played on `num_train_tasks` tasks of `train_split` (held out: `num_eval_tasks`
    of `eval_split`); stored ones are split by task id, `cfg.eval_fraction` of the tasks held out.
    """
    tools = [t.json_schema() for t in env.tools] or None
    counts: dict[str, int] = {}
    notes: list[str] = []
    if cfg.source == "scripted":
        policy = scripted_policy(env, cfg.policy)
        train_tasks = env.load_tasks(train_split, n=num_train_tasks, seed=seed)
        train = scripted_demos(env, train_tasks, chat, policy, cfg, seed, tag="sft-")
        counts["read"] = len(train)
        train = _fit(select_trajectories(train, cfg, counts), cfg, counts)
        eval_counts: dict[str, int] = {}
        eval_tasks = env.load_tasks(eval_split, n=num_eval_tasks, seed=seed)
        held_out = scripted_demos(env, eval_tasks, chat, policy, cfg, seed, tag="sft-eval-")
        held_out = _fit(select_trajectories(held_out, cfg, eval_counts), cfg, eval_counts)
        return SFTData(train=train, eval=held_out, counts=counts, notes=notes)

    if cfg.source == "run":
        trajs = load_run(Path(cfg.path), cfg, chat, tools, env.budget, counts, notes)
    else:
        trajs = load_export(Path(cfg.path), chat, tools, env.budget, counts, notes)
        if cfg.min_reward is not None:
            kept = [t for t in trajs if t.reward >= cfg.min_reward]
            counts["dropped_low_reward"] = len(trajs) - len(kept)
            trajs = kept
    trajs = _fit(trajs, cfg, counts)
    task_ids = sorted({t.task.id for t in trajs})
    order = np.random.default_rng(seed).permutation(len(task_ids))
    n_eval = int(round(cfg.eval_fraction * len(task_ids))) if len(task_ids) > 1 else 0
    held = {task_ids[int(i)] for i in order[:n_eval]}
    return SFTData(train=[t for t in trajs if t.task.id not in held], eval=[t for t in trajs if t.task.id in held],
                   counts=counts, notes=notes)


def _fit(trajs: list[Trajectory], cfg: SFTDataConfig, counts: dict[str, int]) -> list[Trajectory]:
    """Drop demonstrations longer than `max_total_tokens` or without a trained token (counted)."""
    def size(t: Trajectory, kind: str | None = None) -> int:
        return sum(len(s.token_ids) for s in t.segments if kind is None or s.kind == kind)

    kept = [t for t in trajs if size(t) <= cfg.max_total_tokens]
    counts["dropped_too_long"] = counts.get("dropped_too_long", 0) + len(trajs) - len(kept)
    trained = [t for t in kept if size(t, "sampled") > 0]
    counts["dropped_no_trained_tokens"] = counts.get("dropped_no_trained_tokens", 0) + len(kept) - len(trained)
    return trained
