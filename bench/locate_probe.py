"""Locate probe: can the tiny Qwen2.5-VL find the one red square of the find variant at full view?

Trains on fresh samples each step and prints greedy held-out accuracy every `--eval-every` steps. The
LOCATE sample is the whole canvas at `--view` px -> the pixel box of the square's cell (`--target box`,
21 tokens) or its cell number 1-16 (`--target cell`); `--mix` interleaves kinds per sample
(L locate, R read a zoom, N none), so `--mix LLRN` is stage 2 of the perception pretraining.

    .venv/bin/python bench/locate_probe.py --view 112 --steps 400             # chance: 1/16
    .venv/bin/python bench/locate_probe.py --view 224 --init envs/agent_grpo_envs/visual_search/perception \\
        --mix LLRN --loss sum --steps 1000
    .venv/bin/python bench/locate_probe.py --quick                             # seconds (CI)

Measured numbers: BENCHMARKS.md ("Finding the square").
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from agent_grpo_envs.visual_search import pretrain as P
from agent_grpo_envs.visual_search.generator import VisualSearchConfig, generate

from agent_grpo.budget import VisualBudget
from agent_grpo.models.chat import ChatFormat
from agent_grpo.models.loading import load_policy
from agent_grpo.models.tiny import build_tiny_model
from agent_grpo.rollout.batch import assemble_batch
from agent_grpo.rollout.logprobs import forward_logprobs

KIND_NAMES = {"L": "locate", "R": "read", "N": "none"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", default="scratch", help="'scratch' (fan-in init) or a checkpoint folder")
    ap.add_argument("--view", type=int, default=224, help="side of the full view, pixels (zooms stay at 112)")
    ap.add_argument("--mix", default="L", help="kinds per sample, cycled: L locate, R read, N none")
    ap.add_argument("--target", choices=["box", "cell"], default="box")
    ap.add_argument("--loss", choices=["mean", "sum"], default="mean", help="per sample: mean or sum over tokens")
    ap.add_argument("--scene-config", default="{}", help="JSON overrides of the find scenes (e.g. clutter, position_tint)")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--held-out", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the curve here")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds): what CI runs so the script never rots")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.batch, args.eval_every, args.held_out, args.mix = 2, 4, 1, 4, "LR"
    if set(args.mix) - set(KIND_NAMES):
        ap.error(f"--mix takes the letters L, R, N; got {args.mix!r}")

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model, processor = build_tiny_model(seed=args.seed) if args.init == "scratch" else load_policy(args.init)
    chat = ChatFormat(processor)
    config = VisualSearchConfig(**{**P.FIND_SCENES, "full_view": args.view, **json.loads(args.scene_config)})
    budget = VisualBudget(max_turns=3, max_images=3, max_pixels_per_image=112 * 112,
                          max_pixels_per_task_image=args.view * args.view)

    def sample(seed: int, kind: str) -> P.Sample:
        s = P.make_sample(seed, KIND_NAMES[kind], config)
        if kind == "L" and args.target == "cell":
            s.target = str(generate(seed, config).cell)
        return s

    def evaluate() -> dict[str, float]:
        out = {}
        for kind in dict.fromkeys(args.mix):
            samples = [sample(10**9 + 7 + i, kind) for i in range(args.held_out)]
            out[KIND_NAMES[kind]] = float(np.mean(P.exact_matches(model, chat, budget, samples)))
        return out

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    print(f"init={args.init} view={args.view} mix={args.mix} target={args.target} loss={args.loss} "
          f"lr={args.lr} scene={args.scene_config}")
    names = [KIND_NAMES[k] for k in dict.fromkeys(args.mix)]
    print(f"| step | train loss | {' | '.join(f'held-out {n} ({args.held_out})' for n in names)} | seconds |")
    print("| ---: | ---: | " + " | ".join("---:" for _ in names) + " | ---: |")
    curve, start = [], time.time()
    for step in range(1, args.steps + 1):
        model.train()
        trajs = []
        for i in range(args.batch):
            seed = 5_000_000 + (step - 1) * args.batch + i  # below the held-out seeds (1e9+)
            trajs.append(P.encode_sample(sample(seed, args.mix[((step - 1) * args.batch + i) % len(args.mix)]),
                                         chat, budget, seed))
        batch = assemble_batch(trajs, chat, budget)
        lp, _ = forward_logprobs(model, batch)
        per_sample = (lp * batch.loss_mask).sum(1)
        if args.loss == "mean":
            per_sample = per_sample / batch.loss_mask.sum(1).clamp(min=1)
        loss = -per_sample.mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % args.eval_every == 0:
            seconds = round(time.time() - start)
            acc = evaluate()
            curve.append({"step": step, "loss": loss.item(), **acc, "seconds": seconds})
            print(f"| {step} | {loss.item():.3f} | {' | '.join(f'{acc[n]:.3f}' for n in names)} | {seconds} |",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "curve": curve}, f, indent=2)


if __name__ == "__main__":
    main()
