"""Perception probe: can the tiny Qwen2.5-VL learn to read the visual-search digit, and how fast?

Trains only reading (one digit token) from fresh samples each step and prints held-out accuracy every
`--eval-every` steps. Two sample kinds:
- `simple`: a white digit centred on a red square on a grey background (position and size jitter only);
- `scene`: what a zoom into the visual-search canvas returns (`pretrain.make_sample(..., "read")`, with
  box jitter, clutter, colour jitter, rotation), optionally with generator overrides (`--scene-config`).
`--view` sets the side of the model's view in pixels (the image is resized like `VisualBudget.view`).

    .venv/bin/python bench/perception_probe.py --kind simple --view 112 --steps 2000
    .venv/bin/python bench/perception_probe.py --kind scene --view 224 --steps 1500 --scene-config '{"clutter": false}'

Measured numbers are in BENCHMARKS.md ("Perception probes").
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from agent_grpo_envs.visual_search import pretrain as P
from agent_grpo_envs.visual_search.generator import VisualSearchConfig, font
from PIL import Image, ImageDraw

from agent_grpo.budget import VisualBudget
from agent_grpo.models.chat import ChatFormat
from agent_grpo.models.mrope import multimodal_position_ids
from agent_grpo.models.tiny import build_tiny_model
from agent_grpo.rollout.batch import assemble_batch
from agent_grpo.rollout.logprobs import forward_logprobs


def simple_sample(rng: np.random.Generator, side: int = 224, jitter: int = 12) -> P.Sample:
    digit = int(rng.integers(10))
    image = Image.new("RGB", (side, side), (235, 235, 235))
    draw = ImageDraw.Draw(image)
    cx, cy = (side // 2 + int(rng.integers(-jitter, jitter + 1)) for _ in range(2))
    draw.rectangle([cx - side // 4, cy - side // 4, cx + side // 4, cy + side // 4], fill=(215, 30, 35))
    size = int(side * 0.3) + int(rng.integers(-4, 5))
    draw.text((cx, cy), str(digit), fill="white", font=font(size), anchor="mm")
    return P.Sample("read", image, "tool", P.READ_PROMPT, str(digit))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=["simple", "scene"], default="simple")
    ap.add_argument("--view", type=int, default=112, help="side of the model's view, pixels (multiple of 28)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--size", default="S", help="tiny model size S or M")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--scene-config", default="{}", help="JSON overrides of VisualSearchConfig")
    ap.add_argument("--jitter", type=int, default=6, help="simple: max offset of the square from the centre, px")
    ap.add_argument("--box-jitter", type=float, default=8.0, help="scene: zoom box corner noise (std), canvas px")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the curve here")
    ap.add_argument("--held-out", type=int, default=96, help="held-out samples for the accuracy")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds): what CI runs so the script never rots")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.batch, args.eval_every, args.held_out = 2, 4, 1, 8

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model, processor = build_tiny_model(size=args.size, seed=args.seed)
    chat = ChatFormat(processor)
    budget = VisualBudget(max_pixels_per_image=args.view * args.view, max_images=2)
    config = VisualSearchConfig(**json.loads(args.scene_config))

    def sample(rng: np.random.Generator, i: int) -> P.Sample:
        if args.kind == "simple":
            return simple_sample(rng, side=args.view, jitter=args.jitter)
        return P.make_sample(int(rng.integers(2**31)) + i, "read", config, jitter=args.box_jitter)

    test_rng = np.random.default_rng(10**6 + args.seed)
    test = [sample(test_rng, i) for i in range(args.held_out)]
    tb = assemble_batch([P.encode_sample(s, chat, budget, i) for i, s in enumerate(test)], chat, budget)
    truth = torch.tensor([int(s.target) for s in test])
    answer_pos = tb.loss_mask.argmax(1)  # the digit token; the model predicts it from the position before
    digits = [chat.tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed)
    curve, start = [], time.time()
    print(f"kind={args.kind} view={args.view} size={args.size} lr={args.lr} jitter={args.jitter} config={args.scene_config}")
    print(f"| step | train loss | held-out read accuracy ({args.held_out}) | seconds |\n| ---: | ---: | ---: | ---: |")
    for step in range(1, args.steps + 1):
        model.train()
        trajs = [P.encode_sample(sample(rng, i), chat, budget, i) for i in range(args.batch)]
        batch = assemble_batch(trajs, chat, budget)
        lp, _ = forward_logprobs(model, batch)
        loss = -((lp * batch.loss_mask).sum(1) / batch.loss_mask.sum(1)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % args.eval_every == 0:
            model.eval()
            with torch.no_grad():
                positions = multimodal_position_ids(model, tb.input_ids, tb.attention_mask, tb.image_grid_thw)
                out = model(input_ids=tb.input_ids, attention_mask=tb.attention_mask, position_ids=positions,
                            mm_token_type_ids=tb.mm_token_type_ids, pixel_values=tb.pixel_values,
                            image_grid_thw=tb.image_grid_thw)
                pred = out.logits[torch.arange(len(test)), answer_pos - 1][:, digits].argmax(-1)
            acc = float((pred == truth).float().mean())
            curve.append({"step": step, "loss": loss.item(), "accuracy": acc, "seconds": round(time.time() - start)})
            print(f"| {step} | {loss.item():.3f} | {acc:.3f} | {time.time() - start:.0f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "curve": curve}, f, indent=2)


if __name__ == "__main__":
    main()
