"""Perception pretraining of the tiny VLM for visual-search: see, never act.

Like every real VLM, the demo's policy learns to see before RL teaches it to act. This script
teaches the tiny Qwen2.5-VL only perception, with its own instructions, never the tool-call protocol
nor the task's question. Two stages, one command:
1. READ: a crop around a red square's cell (what a zoom returns, with the jitter of imperfect boxes,
   growing over a curriculum), shown at the zoom resolution -> the digit; NONE: a crop of a cell
   without a red square -> "none". (`steps`; this stage alone made the first shipped checkpoint.)
2. LOCATE: the whole canvas of the find variant (one red square, nothing named) at its full view ->
   the pixel box of the square's grid cell, mixed with READ and NONE so reading is kept
   (`locate_steps`; 0 skips the stage).
Samples go through the same chat template, batch assembly and forward as RL (one code path), and
are drawn fresh every step from seeds disjoint from the environment's test split.

    agent-grpo visual-search pretrain OUT_DIR [--steps 3000] [--locate-steps 1500] [--seed 0]
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from agent_grpo.budget import VisualBudget
from agent_grpo.content import ImagePart, Message, TextPart
from agent_grpo.rollout.batch import assemble_batch
from agent_grpo.rollout.logprobs import forward_logprobs
from agent_grpo.trajectory import Segment, Task, Trajectory
from agent_grpo_envs.visual_search.generator import VisualSearchConfig, generate

READ_PROMPT = "Read the digit in the red square. Reply with the digit, or none if there is no red square."
LOCATE_PROMPT = "Where is the red square? Reply with the pixel box of its grid cell."
SYSTEM = "You are a vision model. Reply with the requested value only."
PRETRAIN_SEED_BASE = 7_000_000  # far from the environment's split seeds


@dataclass
class Sample:
    kind: str  # "read", "none" or "locate"
    image: Image.Image
    source: str  # "tool": shown at the zoom resolution
    prompt: str
    target: str


def box_text(box: tuple[int, ...]) -> str:
    """A box as the model writes one: "[x1, y1, x2, y2]"."""
    return "[" + ", ".join(str(int(v)) for v in box) + "]"


def _crop_around(box: tuple[int, ...], size: int, jitter: float, rng: np.random.Generator) -> tuple[int, ...]:
    x1, y1, x2, y2 = (float(v) + rng.normal(0, jitter) for v in box)
    x1, y1 = max(0.0, x1), max(0.0, y1)
    x2, y2 = min(float(size), max(x2, x1 + 56)), min(float(size), max(y2, y1 + 56))
    return tuple(int(round(v)) for v in (x1, y1, x2, y2))


def make_sample(seed: int, kind: str, config: VisualSearchConfig, jitter: float = 8.0) -> Sample:
    """One sample of `kind`; zoom boxes are the cell's box with corners moved by N(0, `jitter`) pixels."""
    rng = np.random.default_rng([seed, 17])
    scene = generate(seed, config)
    size = config.canvas_size
    if kind == "locate":
        return Sample(kind, scene.image, "task", LOCATE_PROMPT, box_text(scene.cell_box))
    if kind == "read":
        # A zoom whose box still contains the whole red square.
        t = scene.target_box
        for _ in range(20):
            crop = _crop_around(scene.cell_box, size, jitter, rng)
            if crop[0] <= t[0] and crop[1] <= t[1] and crop[2] >= t[2] and crop[3] >= t[3]:
                break
        else:
            crop = scene.cell_box
        return Sample(kind, scene.image.crop(crop), "tool", READ_PROMPT, str(scene.digit))
    # "none": a zoom into a cell without a red square (decoy digits live there: reading any digit is not enough).
    squares = {scene.cell, *(c for c, _ in scene.other_squares)}
    others = [c for c in range(1, config.grid**2 + 1) if c not in squares]
    cell = int(rng.choice(others))
    row, col = divmod(cell - 1, config.grid)
    side = config.cell_size
    box = (col * side, row * side, (col + 1) * side, (row + 1) * side)
    crop = _crop_around(box, size, jitter, rng)
    return Sample("none", scene.image.crop(crop), "tool", READ_PROMPT, "none")


def encode_sample(sample: Sample, chat, budget: VisualBudget, index: int) -> Trajectory:
    """A one-turn trajectory: prompt segment, then the target as the trained segment."""
    image = ImagePart.from_pil(sample.image, source=sample.source, observation=0, root=0)
    messages = [
        Message.text("system", SYSTEM),
        Message(role="user", content=[image, TextPart(text="\n" + sample.prompt)]),
    ]
    text = chat.render_text(messages, None, add_generation_prompt=True)
    prompt_ids = chat.encode(text, [budget.view(image.pil, image.source)])
    target_ids = chat.tokenizer.encode(sample.target + chat.assistant_end.rstrip("\n"), add_special_tokens=False)
    task = Task(id=f"pretrain-{index}", question=sample.prompt, answer=sample.target)
    return Trajectory(
        id=f"pretrain-{index}", task=task, env="visual-search-pretrain", group_id=f"pretrain-{index}",
        images=[image], segments=[
            Segment(kind="prompt", token_ids=prompt_ids),
            Segment(kind="sampled", token_ids=target_ids, logprobs=[0.0] * len(target_ids)),
        ],
    )


KINDS = ("read", "read", "read", "none")  # stage 1
LOCATE_KINDS = ("locate", "locate", "read", "none")  # stage 2: locating, while reading is kept
MAX_JITTER = 12.0  # zoom-box corner noise (std, canvas px) at the end of the curriculum
LOCATE_SEED_BASE = 8_000_000  # stage 2's samples: disjoint from stage 1's and from the environment's splits

# The scenes of the find variant (demo_find.yaml's env_options.config): one red square, nothing named,
# the whole canvas seen at FULL_VIEW px.
FIND_SCENES = {"red_squares": 1, "names_cell": False, "full_view": 224}


def jitter_at(step: int, steps: int) -> float:
    """Curriculum: zoom boxes start exact (centred digit) and loosen to MAX_JITTER by 60% of the steps.

    The tiny model first learns to read a centred digit, then to tolerate offsets (probes in
    BENCHMARKS.md: jittered digits from scratch stay at chance much longer)."""
    return MAX_JITTER * min(1.0, step / max(1.0, 0.6 * steps))


def batch_for(
    step: int, batch_size: int, seed: int, chat, budget, config, jitter: float,
    kinds: tuple[str, ...] = KINDS, seed_base: int = PRETRAIN_SEED_BASE,
) -> list[Trajectory]:
    out = []
    for i in range(batch_size):
        s = seed_base + seed * 1_000_003 + step * batch_size + i
        kind = kinds[(step * batch_size + i) % len(kinds)]
        out.append(encode_sample(make_sample(s, kind, config, jitter), chat, budget, s))
    return out


@torch.no_grad()
def exact_matches(model, chat, budget, samples: list[Sample], max_new_tokens: int = 24) -> list[bool]:
    """Greedy generation for each sample's prompt, 16 at a time: whether the text is exactly its target."""
    from agent_grpo.rollout.engine import GenRequest, SamplingParams
    from agent_grpo.rollout.hf_engine import HFEngine

    engine = HFEngine(model.eval(), chat)
    params = SamplingParams(max_new_tokens=max_new_tokens, greedy=True)
    out = []
    for start in range(0, len(samples), 16):
        chunk = samples[start : start + 16]
        trajs = [encode_sample(s, chat, budget, start + j) for j, s in enumerate(chunk)]
        reqs = [GenRequest(token_ids=t.segments[0].token_ids, images=[budget.view(t.images[0].pil, t.images[0].source)])
                for t in trajs]
        for s, res in zip(chunk, engine.generate(reqs, params), strict=True):
            out.append(chat.decode(res.token_ids).replace("<|im_end|>", "").strip() == s.target)
    return out


def evaluate(
    model, chat, budget, config, n: int = 200, seed: int = 1, kinds: tuple[str, ...] = KINDS
) -> dict[str, float]:
    """Held-out accuracy per kind, greedy, on scenes drawn from seeds never used in training."""
    samples = [make_sample(10**9 + seed * 100_003 + i, kinds[i % len(kinds)], config, MAX_JITTER) for i in range(n)]
    correct: dict[str, list[float]] = {k: [] for k in kinds}
    for s, right in zip(samples, exact_matches(model, chat, budget, samples), strict=True):
        correct[s.kind].append(float(right))
    return {k: sum(v) / len(v) for k, v in correct.items() if v}


@dataclass
class Stage:
    """One pretraining stage: what it draws and how its loss weighs a sample."""

    name: str
    steps: int
    kinds: tuple[str, ...]
    config: VisualSearchConfig
    budget: VisualBudget
    seed_base: int
    jitter: bool  # the zoom-jitter curriculum (stage 1); else MAX_JITTER throughout
    token_sum: bool  # loss summed over a sample's tokens (a box's 4 informative tokens among 21); else averaged

    def evaluate(self, model, chat, n: int, seed: int) -> dict[str, float]:
        kinds = tuple(dict.fromkeys(self.kinds))
        out = {}
        for kind in kinds:  # one kind at a time: every kind gets n samples
            out.update(evaluate(model, chat, self.budget, self.config, n=n, seed=seed, kinds=(kind,)))
        return out


def stages(steps: int, locate_steps: int) -> list[Stage]:
    """Stage 1 (read, none) and stage 2 (locate on the find variant's full view, read, none)."""
    from agent_grpo_envs.visual_search.env import VisualSearchEnv

    read_config, find_config = VisualSearchConfig(), VisualSearchConfig(**FIND_SCENES)
    out = []
    if steps:
        out.append(Stage("read", steps, KINDS, read_config, VisualSearchEnv(read_config, allow_tools=False).budget,
                         PRETRAIN_SEED_BASE, jitter=True, token_sum=False))
    if locate_steps:
        out.append(Stage("locate", locate_steps, LOCATE_KINDS, find_config,
                         VisualSearchEnv(find_config, allow_tools=False).budget, LOCATE_SEED_BASE,
                         jitter=False, token_sum=True))
    return out


def train_stage(
    model, chat, stage: Stage, batch_size: int, lr: float, seed: int, eval_every: int, bar, start: float
) -> list[dict]:
    """Run one stage's optimizer steps (fresh AdamW, 50 warm-up steps, linear decay to 10%)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    steps = stage.steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * max(0.1, 1 - s / steps))
    job = bar.add_task(f"pretrain {stage.name}", total=steps)
    history = []
    for step in range(steps):
        model.train()
        jitter = jitter_at(step, steps) if stage.jitter else MAX_JITTER
        trajs = batch_for(step, batch_size, seed, chat, stage.budget, stage.config, jitter, stage.kinds, stage.seed_base)
        batch = assemble_batch(trajs, chat, stage.budget)
        lp, _ = forward_logprobs(model, batch)
        per_sample = (lp * batch.loss_mask).sum(1)
        if not stage.token_sum:
            # Mean per sample: a 20-token answer must not outweigh a 1-token digit while the format is learned.
            per_sample = per_sample / batch.loss_mask.sum(1).clamp(min=1)
        loss = -per_sample.mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        bar.update(job, advance=1, description=f"pretrain {stage.name} loss {loss.item():.3f}")
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            model.eval()
            row = {"stage": stage.name, "step": step + 1, "loss": loss.item(), "time_s": round(time.time() - start, 1),
                   **stage.evaluate(model, chat, n=100, seed=1)}
            history.append(row)
            bar.console.print(row)
    return history


def pretrain(
    out_dir: Path, steps: int = 3000, batch_size: int = 16, lr: float = 1e-3, seed: int = 0, size: str = "S",
    eval_every: int = 250, progress: bool = True, final_eval: int = 500, locate_steps: int = 0,
    init: Path | None = None,
) -> dict:
    """Train perception from the tiny model's fan-in initialisation and save a checkpoint + metrics.

    `init`: start from a stage-1 checkpoint (one this function saved with `locate_steps=0`) and run
    stage 2 only; with the same seed that is the same computation as running both stages here."""
    from rich.progress import Progress

    from agent_grpo.models.chat import ChatFormat
    from agent_grpo.models.loading import load_policy
    from agent_grpo.models.tiny import build_tiny_model, save_checkpoint

    torch.manual_seed(seed)
    init_report = None
    if init is None:
        model, processor = build_tiny_model(size=size, seed=seed)
    else:
        init_report = json.loads((Path(init) / "pretrain_report.json").read_text())
        if init_report.get("locate_steps", 0) or init_report["seed"] != seed or init_report["size"] != size:
            raise ValueError(f"{init} is not a stage-1 checkpoint of seed {seed}, size {size}: see its pretrain_report.json")
        model, processor = load_policy(str(init))
        steps = init_report["steps"]
    chat = ChatFormat(processor)
    plan = stages(steps, locate_steps)
    history = list(init_report["history"]) if init_report else []
    start = time.time()
    with Progress(disable=not progress) as bar:
        for stage in plan:
            if init is not None and stage.name == "read":
                continue
            history += train_stage(model, chat, stage, batch_size, lr, seed, eval_every, bar, start)
    model.eval()
    final = {}
    for stage in plan:
        final.update(stage.evaluate(model, chat, n=final_eval, seed=2))
    out_dir = Path(out_dir)
    save_checkpoint(model, processor, out_dir)
    command = f"agent-grpo visual-search pretrain {out_dir} --steps {steps} --locate-steps {locate_steps} --seed {seed} --size {size}"
    report = {
        "command": command,
        "seed": seed, "steps": steps, "locate_steps": locate_steps, "batch_size": batch_size, "lr": lr, "size": size,
        "data": {"kinds": list(KINDS), "locate_kinds": list(LOCATE_KINDS), "max_jitter": MAX_JITTER,
                 "read_prompt": READ_PROMPT, "locate_prompt": LOCATE_PROMPT,
                 "generator": plan[0].config.model_dump(mode="json") if plan else None,
                 "find_generator": VisualSearchConfig(**FIND_SCENES).model_dump(mode="json"),
                 "seed_base": PRETRAIN_SEED_BASE, "locate_seed_base": LOCATE_SEED_BASE,
                 "views": {s.name: {"full": s.budget.max_pixels("task"), "zoom": s.budget.max_pixels("tool")}
                           for s in plan}},
        "held_out": {"samples": final_eval, **final}, "history": history,
        "wall_time_s": round(time.time() - start + (init_report["wall_time_s"] if init_report else 0.0), 1),
        "torch_threads": torch.get_num_threads(),
    }
    if init is not None:
        report["stage_1_from"] = {"path": str(init), "command": init_report["command"]}
    (out_dir / "pretrain_report.json").write_text(json.dumps(report, indent=2))
    return report
