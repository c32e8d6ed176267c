"""The multi-turn rollout driver: groups of trajectories, token-exact, with tool images.

Per turn, every unfinished trajectory of the batch goes to the engine in one call. For each one:
1. the sampled token ids and their logprobs become a `sampled` segment (never re-tokenised);
2. the decoded text goes to `Environment.step`, which runs the tools and returns new messages;
3. the chat template renders the whole conversation again; the text after what the model has
   already seen (checked to be an exact prefix) is encoded with the new images into an `injected`
   segment. Templates that are not prefix-preserving fail loudly here, never silently.
A trajectory whose next context would pass `max_total_tokens` ends as truncated *before* the
injection, so no image is ever left with its tokens cut.

`schedule: trajectory` runs the same three steps per trajectory as soon as its own turn is back
(`scheduler.py`): tools overlap decoding, and the next turn is submitted at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from PIL import Image
from pydantic import BaseModel, Field, model_validator

from agent_grpo.envs.api import Environment, Episode
from agent_grpo.rollout.batch import images_in_messages
from agent_grpo.rollout.engine import Engine, GenRequest, SamplingParams
from agent_grpo.rollout.stops import text_before_stop
from agent_grpo.rollout.vision import VisionCache
from agent_grpo.trajectory import Segment, Task, Termination, Trajectory

_TURN_ENDS = ("<|im_end|>", "<|endoftext|>")


def _strip_end(text: str, stops) -> str:
    """The assistant message content: sampled text without a trailing end-of-turn token."""
    for end in _TURN_ENDS:
        if end in stops and text.endswith(end):
            return text[: -len(end)]
    return text


class RolloutConfig(BaseModel):
    group_size: int = Field(default=4, ge=1, description="trajectories per task (G)")
    max_total_tokens: int = Field(default=2048, ge=16, description="prompt + all turns, per trajectory")
    max_batch_size: int = Field(default=64, ge=1, description="sequences per engine call")
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    schedule: Literal["batch", "trajectory"] = Field(
        default="batch",
        description="batch: every turn waits for the whole batch; trajectory: each trajectory advances on its own "
        "(scheduler.py); same trajectories for the same seed",
    )
    env_threads: int = Field(default=8, ge=1, description="trajectory schedule: environment steps (tool calls) at once")
    turn_timeout_s: float = Field(
        default=600.0, gt=0, description="trajectory schedule: longest wait for one engine turn or one environment "
        "step (tools have their own, shorter time-outs) before the rollout stops with an error",
    )

    @model_validator(mode="after")
    def _check(self) -> RolloutConfig:
        if self.sampling.max_new_tokens >= self.max_total_tokens:
            raise ValueError(
                f"sampling.max_new_tokens ({self.sampling.max_new_tokens}) must be below max_total_tokens "
                f"({self.max_total_tokens}); raise max_total_tokens or lower max_new_tokens"
            )
        return self


@dataclass
class _Live:
    """Token-side state of one running trajectory."""

    episode: Episode
    token_ids: list[int]
    text: str  # the decoded text of token_ids (the model's context as a string)
    views: list[Image.Image]  # model views of the images in context, in placeholder order
    segments: list[Segment] = field(default_factory=list)
    gen_s: float = 0.0
    env_s: float = 0.0


class RolloutDriver:
    """Runs groups of trajectories for an environment on an engine. Not meant to be subclassed."""

    def __init__(self, env: Environment, engine: Engine, chat, config: RolloutConfig | None = None):
        self.env = env
        self.engine = engine
        self.chat = chat
        # The env's budget counts in this model's visual tokens (Qwen3-VL: 32 px; unchanged for Qwen2.5-VL).
        env.budget = env.budget.for_model(chat.token_side, chat.min_pixels)
        self.config = config or RolloutConfig()
        self.tool_schemas = [t.json_schema() for t in env.tools] or None
        self._vision: VisionCache | None = None  # views made in the current rollout
        self.schedule_stats = None  # `scheduler.ScheduleStats` of the last trajectory-scheduled rollout

    def rollout(
        self, tasks: list[Task], step: int | None = None, seed: int = 0, tag: str | None = None
    ) -> list[Trajectory]:
        """G trajectories per task, scored per group. Deterministic for a given seed and engine.

        Group ids are `<tag><task id>` (tag defaults to `s<step>-`): give repeated rollouts of the same
        tasks within one run distinct tags so trajectory ids stay unique in the store.
        """
        cfg = self.config
        # A group shares its task images: each distinct image is resized once per rollout (views are never mutated).
        self._vision = VisionCache(self.chat, self.env.budget)
        lives: list[_Live] = []
        prefix = tag if tag is not None else ("" if step is None else f"s{step}-")
        for task in tasks:
            group_id = f"{prefix}{task.id}"
            for k in range(cfg.group_size):
                ep = self.env.start(task, group_id=group_id, sample_index=k, trajectory_id=f"{group_id}-{k}")
                ep.trajectory.step = step
                lives.append(self._start(ep))

        if cfg.schedule == "trajectory":
            from agent_grpo.rollout.scheduler import run_per_trajectory

            run_per_trajectory(self, lives, seed)
        else:
            turn = 0
            while active := [lv for lv in lives if not lv.episode.done]:
                params = self.turn_params(seed, turn)
                for chunk_start in range(0, len(active), cfg.max_batch_size):
                    chunk = active[chunk_start : chunk_start + cfg.max_batch_size]
                    self._turn(chunk, params, turn)
                turn += 1
        self._vision = None

        trajectories = [self._finish(lv) for lv in lives]
        for start in range(0, len(trajectories), cfg.group_size):
            self.env.score_group(trajectories[start : start + cfg.group_size])
        return trajectories

    def turn_params(self, seed: int, turn: int) -> SamplingParams:
        """Sampling of turn `turn`: engines derive each request's seed from it, the trajectory id and the turn."""
        return self.config.sampling.model_copy(update={"seed": seed * 100_003 + turn})

    # ---- steps -----------------------------------------------------------------------------

    def _start(self, ep: Episode) -> _Live:
        rendered = self.chat.render(ep.trajectory.messages, self.tool_schemas, add_generation_prompt=True)
        # Views in placeholder order (the prompt's image parts), not `ep.images`' order: the engine pairs them by position.
        views = [self._vision.view(img) for img in images_in_messages(ep.trajectory.messages, ep.images, ep.trajectory.id)]
        ids = self.chat.encode(rendered, views)  # message text encoded literally: no control tokens from data
        live = _Live(episode=ep, token_ids=ids, text=rendered.text, views=views)
        live.segments.append(Segment(kind="prompt", token_ids=ids, turn=0))
        if len(ids) + 1 > self.config.max_total_tokens:
            ep.trajectory.metrics["prompt_too_long"] = 1.0
            self.env.stop(ep, Termination.TRUNCATED)
        return live

    def _turn(self, chunk: list[_Live], params: SamplingParams, turn: int) -> None:
        requests = [self._request(lv, params, turn) for lv in chunk]
        t0 = time.perf_counter()
        results = self.engine.generate(requests, params)
        gen_s = (time.perf_counter() - t0) / len(chunk)
        for lv, res in zip(chunk, results, strict=True):
            lv.gen_s += gen_s
            content = self._record(lv, res, turn)
            t1 = time.perf_counter()
            new_messages = self.env.step(lv.episode, content, truncated=res.finish_reason == "length")
            lv.env_s += time.perf_counter() - t1
            if not lv.episode.done:
                self._inject(lv, new_messages, turn)

    def _request(self, lv: _Live, params: SamplingParams, turn: int) -> GenRequest:
        return GenRequest(
            token_ids=lv.token_ids, images=lv.views, key=lv.episode.trajectory.id, turn=turn,
            max_new_tokens=min(params.max_new_tokens, self.config.max_total_tokens - len(lv.token_ids)),
        )

    def _record(self, lv: _Live, res, turn: int) -> str:
        """Append a sampled turn to the trajectory's tokens; returns the message text for the environment."""
        lv.segments.append(Segment(kind="sampled", token_ids=res.token_ids, logprobs=res.logprobs, turn=turn))
        lv.token_ids = lv.token_ids + res.token_ids
        sampled_text = self.chat.decode(res.token_ids)
        lv.text += sampled_text
        # The message ends at the stop: the rest of a merged token that completed it is not message text.
        return _strip_end(text_before_stop(sampled_text, res.stop_text), self.chat.stop_strings)

    def _inject(self, lv: _Live, new_messages, turn: int) -> None:
        ep = lv.episode
        rendered = self.chat.render(ep.trajectory.messages, self.tool_schemas, add_generation_prompt=True)
        full = rendered.text
        if not full.startswith(lv.text):
            # Not prefix-preserving (or a stop token the template does not render): end, don't guess.
            ep.trajectory.metrics["template_mismatch"] = 1.0
            self._drop_unshown(lv, new_messages)
            self.env.stop(ep, Termination.ERROR)
            return
        suffix = rendered.after(len(lv.text))  # tool text in it is encoded literally (a label never becomes a token)
        new_images = [img for m in new_messages for img in m.images]
        views = [self._vision.view(img) for img in new_images]
        ids = self.chat.encode(suffix, views)
        if len(lv.token_ids) + len(ids) + 1 > self.config.max_total_tokens:
            ep.trajectory.metrics["context_overflow"] = 1.0
            self._drop_unshown(lv, new_messages)
            self.env.stop(ep, Termination.TRUNCATED)
            return
        lv.segments.append(Segment(kind="injected", token_ids=ids, turn=turn))
        lv.token_ids = lv.token_ids + ids
        lv.text = full
        lv.views = lv.views + views

    def _drop_unshown(self, lv: _Live, new_messages) -> None:
        """Remove an observation the model never saw from the conversation (its turn record stays)."""
        traj = lv.episode.trajectory
        shown = len(lv.views)
        for m in new_messages:
            if traj.messages and traj.messages[-1] is m:
                traj.messages.pop()
        traj.metrics["images_not_shown"] = float(len(traj.images) - shown)
        del traj.images[shown:]

    def _finish(self, lv: _Live) -> Trajectory:
        traj = self.env.finish(lv.episode)
        traj.segments = lv.segments
        sampled = [s for s in lv.segments if s.kind == "sampled"]
        traj.metrics.update(
            response_tokens=float(sum(len(s.token_ids) for s in sampled)),
            total_tokens=float(len(lv.token_ids)),
            time_generation_s=lv.gen_s,
            time_env_s=lv.env_s,
        )
        self.env.close(lv.episode)
        return traj
