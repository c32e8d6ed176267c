"""Per-trajectory scheduling (`rollout.schedule: trajectory`): no trajectory waits for the rest of its batch.

The batch driver moves every trajectory one turn at a time: a turn waits for the slowest sequence,
and the tools of the batch run after decoding is over. Here each trajectory advances as soon as its
own turn is back:

1. its sampled tokens are recorded (on this thread, as in the batch driver);
2. its environment step (parsing, tool calls in the tool worker processes) runs on a thread of a
   small pool while the engine keeps decoding the other sequences;
3. its next turn is rendered, checked and submitted to the engine at once.

Engines that decode continuously implement `StepEngine` (submit requests, advance by one `step`,
collect the finished ones): vLLM through `vllm_async.VLLMStepEngine` (its `LLMEngine` step loop, so new
requests join the running batch at the next step), any batch `Engine` through `BatchedStepEngine`
(each step generates what is queued; the scripted engine in tests). The Hugging Face engine keeps one
`generate` call per turn (its sampling draws from one random stream for the whole batch, so a
trajectory's sample would depend on its batch-mates); only its environment steps run concurrently.

Same trajectories as `schedule: batch`: a trajectory's turn t is sampled with the same parameters as
in the batch driver (seed of (run seed, step) and turn t; vLLM derives each request's seed from that,
the trajectory id and the turn), so its tokens do not depend on when it was scheduled. The token and
image bookkeeping is the driver's own (`_record`, `_inject`): same checks, same `Trajectory`.
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from agent_grpo.errors import AgentGrpoError
from agent_grpo.rollout.engine import Engine, GenRequest, GenResult, SamplingParams

if TYPE_CHECKING:
    from agent_grpo.rollout.driver import RolloutDriver, _Live


class RolloutTimeout(AgentGrpoError, TimeoutError):
    """An engine turn or an environment step took longer than `turn_timeout_s`; names the trajectory."""


@runtime_checkable
class StepEngine(Protocol):
    """An engine that decodes continuously: requests join and leave the running batch at any step."""

    def submit(self, handle: str, request: GenRequest, params: SamplingParams) -> None:
        """Queue one request; its result comes back from a later `step` under `handle`."""
        ...

    def step(self) -> list[tuple[str, GenResult]]:
        """Advance decoding by one step; (handle, result) of every request that finished in it."""
        ...

    def abort(self, handles: list[str]) -> None:
        """Drop requests that are no longer wanted (after an error)."""
        ...


class BatchedStepEngine:
    """`StepEngine` over a batch `Engine`: each `step` generates everything queued, one call per parameter set.

    Also an `Engine` (generate, update_weights), so a driver can use it in either schedule.
    """

    def __init__(self, engine: Engine, max_batch_size: int = 64):
        self.engine = engine
        self.max_batch_size = max_batch_size
        self._queue: list[tuple[str, GenRequest, SamplingParams]] = []

    def generate(self, requests: list[GenRequest], params: SamplingParams) -> list[GenResult]:
        return self.engine.generate(requests, params)

    def update_weights(self, state_dict: dict) -> None:
        self.engine.update_weights(state_dict)

    def submit(self, handle: str, request: GenRequest, params: SamplingParams) -> None:
        self._queue.append((handle, request, params))

    def step(self) -> list[tuple[str, GenResult]]:
        taken, self._queue = self._queue[: self.max_batch_size], self._queue[self.max_batch_size :]
        by_params: dict[SamplingParams, list[tuple[str, GenRequest]]] = {}
        for handle, request, params in taken:
            by_params.setdefault(params, []).append((handle, request))
        out = []
        for params, items in by_params.items():
            results = self.engine.generate([r for _, r in items], params)
            out += [(h, res) for (h, _), res in zip(items, results, strict=True)]
        return out

    def abort(self, handles: list[str]) -> None:
        drop = set(handles)
        self._queue = [q for q in self._queue if q[0] not in drop]


def step_engine_for(engine) -> StepEngine | None:
    """The continuous form of `engine`, or None for an engine that keeps one batch per turn (HF)."""
    if isinstance(engine, StepEngine):
        return engine
    from agent_grpo.rollout.vllm_engine import VLLMEngine  # imports vLLM only when one is built

    if isinstance(engine, VLLMEngine):
        from agent_grpo.rollout.vllm_async import VLLMStepEngine

        return VLLMStepEngine.of(engine)
    return None


@dataclass
class ScheduleStats:
    """Where the rollout's wall time went: engine decoding, or the engine idle waiting for environments."""

    wall_s: float = 0.0
    engine_s: float = 0.0  # inside engine steps (or generate calls)
    idle_s: float = 0.0  # nothing to decode: every live trajectory was in its environment step
    engine_steps: int = 0

    @property
    def idle_share(self) -> float:
        return self.idle_s / self.wall_s if self.wall_s > 0 else 0.0


def run_per_trajectory(driver: RolloutDriver, lives: list[_Live], seed: int) -> ScheduleStats:
    """Run every live trajectory to its end, each at its own pace. Stats also land in `driver.schedule_stats`."""
    stepper = step_engine_for(driver.engine)
    stats = ScheduleStats()
    start = time.perf_counter()
    driver.env.pool  # noqa: B018 - create the shared tool pool here, not racing on the environment threads
    pool = ThreadPoolExecutor(max_workers=driver.config.env_threads, thread_name_prefix="agent-grpo-env")
    try:
        if stepper is None:
            _batch_turns(driver, lives, seed, pool, stats)
        else:
            _Scheduler(driver, stepper, seed, pool, stats).run(lives)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a stuck environment step must not hang the caller
        stats.wall_s = time.perf_counter() - start
        driver.schedule_stats = stats
    return stats


def _env_step(driver: RolloutDriver, lv: _Live, content: str, truncated: bool) -> tuple[list, float]:
    t0 = time.perf_counter()
    messages = driver.env.step(lv.episode, content, truncated=truncated)
    return messages, time.perf_counter() - t0


def _result(fut: Future, lv: _Live, started: float, limit: float, what: str):
    left = limit - (time.perf_counter() - started)
    done, _ = wait([fut], timeout=max(0.0, left))
    if not done:
        raise RolloutTimeout(
            f"trajectory {lv.episode.trajectory.id}: {what} took longer than rollout turn_timeout_s={limit:g} s "
            "(a tool's own time-out cuts a stuck call; this is an environment step that never returned); "
            "raise turn_timeout_s if the environment is that slow"
        )
    return fut.result()


def _batch_turns(driver: RolloutDriver, lives: list[_Live], seed: int, pool: ThreadPoolExecutor,
                 stats: ScheduleStats) -> None:
    """One `generate` per turn and chunk (as the batch driver), the chunk's environment steps concurrently."""
    cfg = driver.config
    turn = 0
    while active := [lv for lv in lives if not lv.episode.done]:
        params = driver.turn_params(seed, turn)
        for chunk_start in range(0, len(active), cfg.max_batch_size):
            chunk = active[chunk_start : chunk_start + cfg.max_batch_size]
            t0 = time.perf_counter()
            results = driver.engine.generate([driver._request(lv, params, turn) for lv in chunk], params)
            spent = time.perf_counter() - t0
            stats.engine_s += spent
            stats.engine_steps += 1
            futures = []
            for lv, res in zip(chunk, results, strict=True):
                lv.gen_s += spent / len(chunk)
                content = driver._record(lv, res, turn)
                futures.append((lv, pool.submit(_env_step, driver, lv, content, res.finish_reason == "length")))
            t1 = time.perf_counter()
            for lv, fut in futures:  # injected in batch order, as the batch driver does
                messages, env_s = _result(fut, lv, t1, cfg.turn_timeout_s, "its environment step")
                lv.env_s += env_s
                if not lv.episode.done:
                    driver._inject(lv, messages, turn)
            stats.idle_s += time.perf_counter() - t1
        turn += 1


class _Scheduler:
    """The event loop: engine steps on this thread, environment steps on the pool."""

    def __init__(self, driver: RolloutDriver, stepper: StepEngine, seed: int, pool: ThreadPoolExecutor,
                 stats: ScheduleStats):
        self.driver, self.stepper, self.seed, self.pool, self.stats = driver, stepper, seed, pool, stats
        self.limit = driver.config.turn_timeout_s
        self.decoding: dict[str, tuple[_Live, int, float]] = {}  # handle -> (trajectory, turn, submitted at)
        self.stepping: dict[Future, tuple[_Live, int, float]] = {}  # environment step -> (trajectory, turn, started)

    def run(self, lives: list[_Live]) -> None:
        try:
            for lv in lives:
                if not lv.episode.done:
                    self._submit(lv, 0)
            while self.decoding or self.stepping:
                if self.decoding:
                    t0 = time.perf_counter()
                    finished = self.stepper.step()
                    self.stats.engine_s += time.perf_counter() - t0
                    self.stats.engine_steps += 1
                    for handle, res in finished:
                        self._turn_done(handle, res)
                    self._check_decoding()
                    ready = [f for f in self.stepping if f.done()]
                else:  # the engine has nothing to do until an environment step returns
                    t0 = time.perf_counter()
                    ready = self._wait_for_environment()
                    self.stats.idle_s += time.perf_counter() - t0
                for fut in ready:
                    self._env_done(fut)
        except BaseException:
            if self.decoding:
                self.stepper.abort(list(self.decoding))
            raise

    def _submit(self, lv: _Live, turn: int) -> None:
        params = self.driver.turn_params(self.seed, turn)
        handle = f"{lv.episode.trajectory.id}#{turn}"
        self.stepper.submit(handle, self.driver._request(lv, params, turn), params)
        self.decoding[handle] = (lv, turn, time.perf_counter())

    def _turn_done(self, handle: str, res: GenResult) -> None:
        lv, turn, submitted = self.decoding.pop(handle)
        lv.gen_s += time.perf_counter() - submitted  # latency of this turn, other sequences decoding alongside
        content = self.driver._record(lv, res, turn)
        fut = self.pool.submit(_env_step, self.driver, lv, content, res.finish_reason == "length")
        self.stepping[fut] = (lv, turn, time.perf_counter())

    def _env_done(self, fut: Future) -> None:
        lv, turn, _ = self.stepping.pop(fut)
        messages, env_s = fut.result()  # an environment's exception is a bug: it propagates
        lv.env_s += env_s
        if not lv.episode.done:
            self.driver._inject(lv, messages, turn)
        if not lv.episode.done:
            self._submit(lv, turn + 1)

    def _wait_for_environment(self) -> list[Future]:
        now = time.perf_counter()
        oldest = min(started for _, _, started in self.stepping.values())
        done, _ = wait(list(self.stepping), timeout=max(0.0, oldest + self.limit - now), return_when=FIRST_COMPLETED)
        if not done:
            lv, _, _ = min(self.stepping.values(), key=lambda v: v[2])
            raise RolloutTimeout(
                f"trajectory {lv.episode.trajectory.id}: its environment step took longer than rollout "
                f"turn_timeout_s={self.limit:g} s (a tool's own time-out cuts a stuck call; this is an environment "
                "step that never returned); raise turn_timeout_s if the environment is that slow"
            )
        return list(done)

    def _check_decoding(self) -> None:
        now = time.perf_counter()
        for handle, (lv, turn, submitted) in self.decoding.items():
            if now - submitted > self.limit:
                raise RolloutTimeout(
                    f"trajectory {lv.episode.trajectory.id}: the engine did not return turn {turn} within rollout "
                    f"turn_timeout_s={self.limit:g} s (request {handle}); the engine may be overloaded or stuck: "
                    "raise turn_timeout_s or lower rollout.tasks_per_step"
                )

