"""A scripted visual-search policy: the model texts of an ideal or deliberately noisy trajectory.

For demonstrations (SFT cold start) and tests. `quality=1` is the ideal policy: zoom into the red
square's cell, then read the digit. Lower quality mixes in careless demonstrators (coarse zooms,
needless second zooms, guesses), so RL has room.

The script is open-loop (it knows the answer from the task row), so run it through the
environment with `play_scripted` to get a real trajectory with the tool's images in it.
"""

from __future__ import annotations

import json

import numpy as np

from agent_grpo.boxes import Box
from agent_grpo.envs.api import Environment
from agent_grpo.trajectory import Task, Trajectory
from agent_grpo_envs._common import useful_zoom

THINK_ZOOM = "The digit in that red square is too small to read here. I will zoom in on its cell."
THINK_GUESS = "The digit in that red square is too small to read. I will guess."
THINK_CLOSER = "The digit is still small. I will zoom in closer on the cell."


def zoom_call(box: list[int], label: str = "red square") -> str:
    """A `zoom_in` tool call as the model writes it."""
    return "<tool_call>" + json.dumps({"name": "zoom_in", "arguments": {"bbox_2d": box, "label": label}}) + "</tool_call>"


def _block_around(cell: Box, size: int, rng: np.random.Generator) -> list[float]:
    """A 2 x 2-cell block that contains `cell` (one of up to four placements, at random)."""
    side = cell.width
    xs = [x for x in (cell.x1 - side, cell.x1) if x >= 0 and x + 2 * side <= size]
    ys = [y for y in (cell.y1 - side, cell.y1) if y >= 0 and y + 2 * side <= size]
    x, y = float(rng.choice(xs)), float(rng.choice(ys))
    return [x, y, x + 2 * side, y + 2 * side]


def scripted_turns(task: Task, quality: float = 1.0, rng: np.random.Generator | None = None) -> list[str]:
    """The model turns of one visual-search trajectory, from a mix of careful and careless demonstrators.

    With `noise = 1 - quality`, each trajectory is one of:
    - guess (probability 0.2 x noise): no zoom, a uniform digit;
    - coarse (0.8 x noise): one zoom on a 2 x 2-cell block around the target (the digit is then too
      small to read for the tiny model), then an answer;
    - two-step (0.4 x noise): the coarse zoom, then a zoom on the cell, then an answer;
    - tight (the rest): one zoom on the cell, then an answer.
    (When the three weights add up to more than 1, they are scaled down and no trajectory is tight.)
    Boxes are exact (the question gives the cell's box). The demonstrator reads whatever a zoom showed
    whole (a person can read the coarse view), and guesses otherwise. (Wrong answers after a legible
    zoom taught the model that the digit is noise: after SFT it read forced exact zooms at chance.)
    At quality 0.5: 30% tight, 40% coarse, 20% two-step, 10% guess: the greedy mode of a policy
    imitating them zooms coarsely, and sampling finds the tight zoom often enough for RL to prefer it.
    """
    if not 0.0 <= quality <= 1.0:
        raise ValueError(f"quality must be in [0, 1], got {quality}")
    rng = rng if rng is not None else np.random.default_rng()
    meta = task.metadata
    digit = str(task.answer)
    size = task.images[0].width if task.images else 896
    cell = Box.from_list(meta["cell_box"])
    noise = 1.0 - quality
    weights = np.array([0.2, 0.8, 0.4]) * noise
    weights = weights / max(1.0, weights.sum())
    style = rng.choice(["guess", "coarse", "two-step", "tight"], p=[*weights, 1.0 - weights.sum()])

    if style == "guess":
        guess = str(rng.integers(10))
        return [f"<think>{THINK_GUESS}</think>\n<answer>{guess}</answer>"]
    boxes = []
    if style in ("coarse", "two-step"):
        boxes.append([int(v) for v in _block_around(cell, size, rng)])
    if style in ("tight", "two-step"):
        boxes.append([int(v) for v in cell.as_list()])

    sees_target = useful_zoom(Box.from_list(boxes[-1]), Box.from_list(meta["target_box"]))
    answer = digit if sees_target else str(rng.integers(10))
    think = f"The zoomed image shows the digit {answer}." if sees_target else "I cannot see the digit clearly."
    turns = [f"<think>{THINK_ZOOM}</think>\n{zoom_call(boxes[0])}"]
    if style == "two-step":
        turns.append(f"<think>{THINK_CLOSER}</think>\n{zoom_call(boxes[1])}")
    return [*turns, f"<think>{think}</think>\n<answer>{answer}</answer>"]


def direct_turns(task: Task, quality: float = 1.0, rng: np.random.Generator | None = None) -> list[str]:
    """One turn that answers from the full view, without a tool: the no-tools ablation's demonstrations.

    A guess with probability `0.2 x (1 - quality)` (the guess share of `scripted_turns`), right otherwise: the
    demonstrator reads the full view, as a person can; whether the model can is what the ablation measures."""
    if not 0.0 <= quality <= 1.0:
        raise ValueError(f"quality must be in [0, 1], got {quality}")
    rng = rng if rng is not None else np.random.default_rng()
    answer = str(rng.integers(10)) if rng.random() < 0.2 * (1 - quality) else str(task.answer)
    return [f"<think>The digit in that red square is {answer}.</think>\n<answer>{answer}</answer>"]


def play(env: Environment, task: Task, turns: list[str], group_id: str | None = None, sample_index: int = 0) -> Trajectory:
    """Run fixed model turns through `env` (stopping where the environment ends the trajectory)."""
    episode = env.start(task, group_id=group_id, sample_index=sample_index)
    for text in turns:
        if episode.done:
            break
        env.step(episode, text)
    traj = env.finish(episode)
    env.close(episode)
    return traj


def play_scripted(
    env: Environment, task: Task, quality: float = 1.0, rng: np.random.Generator | None = None, **kwargs
) -> Trajectory:
    """One scripted trajectory through `env` (unscored: score groups with `env.score_group`)."""
    return play(env, task, scripted_turns(task, quality, rng), **kwargs)
