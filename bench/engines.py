"""HF and vLLM rollout engines side by side on the same rollout work (issue 12).

    .venv-vllm/bin/python bench/engines.py            # both engines (vLLM venv: scripts/setup_vllm.sh)
    .venv/bin/python bench/engines.py --quick         # CI: without vLLM only the HF half runs

What runs: the tiny Qwen2.5-VL (size S, seed 0) on the installed `visual-search` environment, free
sampling at temperature 1 (seeded), `--tasks` tasks x `--group-size` trajectories through
`RolloutDriver`, once per engine after one warm-up rollout. Reported per engine: trajectories/s,
generated tokens/s, and the train/inference gap: |engine logprob - trainer forward logprob| over every
sampled token (mean and max), and the KL estimate mean(exp(d) - 1 - d) with d = trainer - engine.
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import torch

from agent_grpo.envs.registry import make_env
from agent_grpo.models.chat import ChatFormat
from agent_grpo.models.tiny import build_tiny_model
from agent_grpo.rollout import (
    HFEngine,
    RolloutConfig,
    RolloutDriver,
    SamplingParams,
    assemble_batch,
    forward_logprobs,
)


def vllm_available() -> bool:
    spec = importlib.util.find_spec("vllm")
    return spec is not None and spec.origin is not None


def gap(model, chat, budget, trajs) -> dict[str, float]:
    """Engine vs trainer logprobs over the sampled tokens of `trajs`."""
    diffs = []
    with torch.no_grad():
        for t in trajs:
            batch = assemble_batch([t], chat, budget)
            lp, _ = forward_logprobs(model, batch)
            mask = batch.loss_mask.bool()
            diffs.append((lp - batch.old_logprobs)[mask])
    d = torch.cat(diffs)
    return {"gap_mean": float(d.abs().mean()), "gap_max": float(d.abs().max()),
            "kl_est": float((d.exp() - 1 - d).mean())}


def run(name, engine, model, chat, env, args) -> dict[str, float]:
    config = RolloutConfig(group_size=args.group_size, max_total_tokens=2048,
                           sampling=SamplingParams(max_new_tokens=args.max_new_tokens))
    driver = RolloutDriver(env, engine, chat, config)
    tasks = env.load_tasks("train", n=args.tasks, seed=0)
    driver.rollout(tasks[:1], seed=99, tag="warm-")
    t0 = time.perf_counter()
    trajs = driver.rollout(tasks, seed=1, tag="bench-")
    wall = time.perf_counter() - t0
    tokens = sum(t.metrics["response_tokens"] for t in trajs)
    return {"engine": name, "trajectories": len(trajs), "wall_s": wall, "traj_per_s": len(trajs) / wall,
            "gen_tok_per_s": tokens / wall, **gap(model, chat, env.budget, trajs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 tasks x 2, 16 tokens a turn (CI)")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.group_size, args.max_new_tokens = 2, 2, 16
    torch.set_num_threads(1)
    model, processor = build_tiny_model(size="S", seed=0)
    chat = ChatFormat(processor)
    env = make_env("visual-search")
    rows = [run("hf", HFEngine(model, chat), model, chat, env, args)]
    if vllm_available():
        from agent_grpo.rollout.vllm_engine import VLLMEngine

        t0 = time.perf_counter()
        engine = VLLMEngine(model, processor, chat, max_images=env.budget.max_images, max_model_len=2048)
        print(f"vLLM engine started in {time.perf_counter() - t0:.1f} s")
        rows.append(run("vllm", engine, model, chat, env, args))
    else:
        print("vLLM is not installed here: only the HF half ran (bash scripts/setup_vllm.sh, then run this "
              "script with .venv-vllm/bin/python)")
    env.shutdown()
    cols = ["engine", "trajectories", "wall_s", "traj_per_s", "gen_tok_per_s", "gap_mean", "gap_max", "kl_est"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols))


if __name__ == "__main__":
    main()
