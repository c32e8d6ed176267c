"""Pipelined rollouts (`rollout.max_staleness: 1`): step k+1 is sampled while step k's update runs.

    step k:   [rollout k+1 (policy version k-1) ......]
              [update k ..................]
                                                     | join, weight sync, store, checkpoint k
    step k+1: [rollout k+2 (policy version k) ......]
              [update k+1 on rollout k+1 .]

The rollouts of step k+1 are sampled with the weights before update k (one version behind the weights
they train); each trajectory records that version (`Trajectory.policy_version`) and its sampling
logprobs, and the loss reweights by pi_current / pi_behaviour (`loss.is_level`, truncated at `is_cap`).

Exact resume: before checkpoint k is written, the prefetched rollouts of step k+1 are written to
`OUT/pending/step_<k+1>/` (a trajectory store with every image, and `batch.json` with which of them
are trained on, in order, written last as the completeness mark). A run resumed from checkpoint k
trains step k+1 on exactly those, so it reproduces the run that never stopped; the weights that
sampled them (version k-1) no longer exist after checkpoint k, so they could not be regenerated.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from agent_grpo.errors import ConfigError
from agent_grpo.store import ImagePolicy, RunStore
from agent_grpo.trajectory import Trajectory

PENDING = "pending"
BATCH_FILE = "batch.json"


@dataclass
class Rollout:
    """What `GRPORecipe.rollout_step` returns: every trajectory sampled, the ones trained on, metrics."""

    sampled: list[Trajectory]
    kept: list[Trajectory]
    info: dict[str, float]
    gen_s: float = 0.0  # generation time (in the background for a prefetched step)


class Prefetch:
    """One step's rollout on a background thread. The trainer's random streams are left untouched:
    a generating engine reseeds torch's global generator, which the update must not see."""

    def __init__(self, fn):
        self._fn = fn
        self._result: Rollout | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="agent-grpo-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with torch.random.fork_rng(devices=[]):
                self._result = self._fn()
        except BaseException as e:  # noqa: BLE001 - re-raised on the trainer's thread by `result`
            self._error = e

    def result(self) -> Rollout:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


def check_pipelining(cfg, num_processes: int) -> None:
    """What `rollout.max_staleness: 1` needs; checked before any model is loaded."""
    if cfg.rollout.max_staleness == 0:
        return
    if cfg.loss.is_level == "none":
        raise ConfigError(
            "rollout.max_staleness: 1 trains on rollouts sampled one policy version back; without importance "
            "sampling (loss.is_level: none) nothing corrects for that. Set loss.is_level: token (or sequence)"
        )
    if cfg.rollout.engine == "vllm" and cfg.rollout.vllm.sleep_during_update:
        raise ConfigError(
            "rollout.max_staleness: 1 generates during the update, rollout.vllm.sleep_during_update puts the engine "
            "to sleep then; set one of them off"
        )
    if num_processes > 1:
        raise ConfigError(
            f"rollout.max_staleness: 1 runs on one process for now (got {num_processes}): the background rollout's "
            "collectives would interleave with the update's; set rollout.max_staleness: 0"
        )


def pending_dir(out_dir: Path, step: int) -> Path:
    return out_dir / PENDING / f"step_{step:06d}"


def store_pending(out_dir: Path, step: int, rollout: Rollout) -> None:
    """Write step `step`'s prefetched rollout durably; `batch.json` last, atomically."""
    folder = pending_dir(out_dir, step)
    if folder.exists():  # a half-written one from a killed run: it has no batch.json, or it is this very rollout
        shutil.rmtree(folder)
    with RunStore.create(folder / "trajectories", images=ImagePolicy(max_bytes=None), durable=True) as store:
        store.extend(rollout.sampled)
    # Advantages are in the stored trajectories (set on the trained ones only, as when they were sampled).
    batch = {"step": step, "kept": [t.id for t in rollout.kept], "info": rollout.info, "gen_s": rollout.gen_s}
    tmp = folder / (BATCH_FILE + ".tmp")
    with tmp.open("w") as f:
        json.dump(batch, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(folder / BATCH_FILE)


def load_pending(out_dir: Path, step: int) -> Rollout | None:
    """Step `step`'s stored prefetched rollout, or None if there is none (or it was not finished)."""
    folder = pending_dir(out_dir, step)
    if not (folder / BATCH_FILE).exists():
        return None
    batch = json.loads((folder / BATCH_FILE).read_text())
    store = RunStore.open(folder / "trajectories")
    sampled = [store.read(row, images=True) for row in store.rows]
    by_id = {t.id: t for t in sampled}
    missing = [i for i in batch["kept"] if i not in by_id]
    if missing:
        raise ConfigError(f"{folder}: batch.json names trajectories its store lacks ({missing[:3]}); "
                          f"delete {folder} to sample step {step} again")
    return Rollout(sampled=sampled, kept=[by_id[i] for i in batch["kept"]], info=batch["info"], gen_s=batch["gen_s"])


def drop_pending(out_dir: Path, up_to: int) -> None:
    """Forget stored prefetched rollouts of steps <= `up_to` (they are trained on and checkpointed)."""
    root = out_dir / PENDING
    if not root.exists():
        return
    for folder in sorted(root.iterdir()):
        if folder.name.startswith("step_") and folder.name[5:].isdigit() and int(folder.name[5:]) <= up_to:
            shutil.rmtree(folder, ignore_errors=True)
