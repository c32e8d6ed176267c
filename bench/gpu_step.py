"""The GRPO update phase at real sizes: step time (forward, backward, optimizer), tokens/s, MFU, peak memory (issue 13).

    python bench/gpu_step.py --sizes 3b,7b --json $OUT/gpu_step.json     # on one GPU (bench/gpu_step.sh)
    python bench/gpu_step.py --quick                                     # CPU dry run, tiny sizes, seconds (CI)

Models: Qwen2.5-VL with random weights (std 0.02), bf16, built from
`tests/fixtures/qwen2_5_vl_7b_instruct/config.json` (7b) and a 3B-shaped variant of it (3b). The 3B shape is
stated from the public Qwen2.5-VL-3B-Instruct config as we know it, not read from a file here: text hidden 2048,
36 layers, 16 heads, 2 KV heads, intermediate 11008, vocabulary 151,936, tied embeddings; the same vision tower
as 7B (32 blocks of 1280, window 112 px, full attention in blocks 7/15/23/31) with a merger out to 2048.

Batch: `--trajectories` multi-turn tool trajectories, each: a ~220-token prompt with a task image
(`--image-px`, e.g. 812 px -> 841 visual tokens), then 1-4 tool turns (drawn per trajectory) of ~120 sampled
tokens (the tool call) + a `--crop-px` crop (448 px -> 256 tokens) + ~30 injected tokens, and a ~90-token answer.
Loss mask on the sampled tokens; dapo loss as in `train/step.py` (forward_head -> grpo_loss -> backward), AdamW
(fused on CUDA) after all micro-batches. Micro-batches of at most `--micro-batch-tokens`: packed rows
(`rollout/packing.py`, balanced by tokens) or right-padded rows (greedy), per `--modes`.

FLOPs (model FLOPs, so recomputation from gradient checkpointing or the head's backward is not counted):
  language model: 6 * N_lm * T + 6 * n_layers * d_q * sum_i s_i^2 (causal attention: QK^T and AV, fwd+bwd,
      half of the s_i x s_i scores per sequence i) + 6 * d * V * N_loss (the lm_head, only at the N_loss
      trained positions the head computes); N_lm = non-embedding language parameters, T = real tokens.
  vision tower: 6 * N_vis * P + 12 * d_v * (n_full * sum_img p^2 + n_window * P * w) (bidirectional
      attention; P patches, p per image, w = 64 patches per 112 px window).
MFU = FLOPs / step time / peak; peak = 989 TFLOP/s (H100/H200 SXM dense bf16 spec); also reported against
790 TFLOP/s, what plain bf16 matmuls measured on the lent H200. Peak memory = torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG_7B = ROOT / "tests/fixtures/qwen2_5_vl_7b_instruct/config.json"
PEAK_SPEC, PEAK_MEASURED = 989e12, 790e12
SHAPES = {
    "7b": {},  # as the config file says
    "3b": {"hidden_size": 2048, "num_hidden_layers": 36, "num_attention_heads": 16, "num_key_value_heads": 2,
           "intermediate_size": 11008, "vocab_size": 151936, "max_window_layers": 36, "tie_word_embeddings": True},
    "quick": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 128, "vocab_size": 2048, "max_window_layers": 2},
}
QUICK_VISION = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "fullatt_block_indexes": [1]}


def make_config(size: str):
    from transformers import Qwen2_5_VLConfig

    raw = json.loads(CONFIG_7B.read_text())
    text = {k: v for k, v in raw.items() if k not in ("vision_config", "architectures", "transformers_version",
                                                      "torch_dtype", "rope_scaling", "rope_theta")}
    shape = dict(SHAPES[size])
    tie = shape.pop("tie_word_embeddings", False)
    text.update(shape)
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    section = [16, 24, 24] if head_dim == 128 else [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]
    text["rope_parameters"] = {"rope_type": "default", "mrope_section": section,
                               "rope_theta": raw.get("rope_theta", 1e6)}
    vision = dict(raw["vision_config"], out_hidden_size=text["hidden_size"])
    if size == "quick":
        vision.update(QUICK_VISION)
    names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    top = {k: raw[k] for k in names}
    if size == "quick":  # a small vocabulary: special ids at its end
        top = {k: text["vocab_size"] - 1 - i for i, k in enumerate(names)}
        text.update(bos_token_id=0, eos_token_id=1)
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tie, **top)


def make_model(config, device: str, dtype: torch.dtype, attn: str):
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation=attn)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.02)
    return model


def trajectory_layout(rng: torch.Generator, config, image_px: int, crop_px: int, max_turns: int):
    """Segments of one synthetic tool trajectory: (kind, n_tokens or image grid)."""
    def rand(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=rng))

    turns = rand(1, max_turns)
    segs = [("text", rand(200, 240)), ("image", image_px), ("text", rand(15, 25))]
    for _ in range(turns):
        segs += [("sampled", rand(90, 150)), ("text", rand(20, 40)), ("image", crop_px), ("text", 8)]
    segs += [("sampled", rand(60, 120)), ("text", 2)]
    return segs


def make_trajectory_batch(config, n: int, image_px: int, crop_px: int, max_turns: int, seed: int = 0):
    """Token rows, loss masks and images of `n` trajectories (lists; assembled into batches later)."""
    rng = torch.Generator().manual_seed(seed)
    vocab = config.text_config.vocab_size
    merge = config.vision_config.spatial_merge_size
    patch = config.vision_config.patch_size
    rows = []
    for _ in range(n):
        ids, mask, grids = [], [], []
        for kind, value in trajectory_layout(rng, config, image_px, crop_px, max_turns):
            if kind == "image":
                side = value // (patch * merge) * merge  # patches per side, a multiple of the merge
                grids.append([1, side, side])
                count = side * side // merge**2
                ids += [config.vision_start_token_id, *[config.image_token_id] * count, config.vision_end_token_id]
                mask += [0.0] * (count + 2)
            else:
                ids += torch.randint(0, min(vocab - 8, 150000), (value,), generator=rng).tolist()
                mask += [1.0 if kind == "sampled" else 0.0] * value
        rows.append((ids, mask, grids))
    return rows


def to_batch(rows, config, device, dtype):
    from agent_grpo.models.mrope import mm_token_type_ids
    from agent_grpo.rollout.batch import TrainBatch

    width = max(len(r[0]) for r in rows)
    B = len(rows)
    input_ids = torch.zeros((B, width), dtype=torch.long)
    attention = torch.zeros((B, width), dtype=torch.long)
    loss_mask = torch.zeros((B, width))
    for b, (ids, mask, _) in enumerate(rows):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        attention[b, : len(ids)] = 1
        loss_mask[b, : len(ids)] = torch.tensor(mask)
    grids = torch.tensor([g for r in rows for g in r[2]], dtype=torch.long)
    v = config.vision_config
    patches = int(grids.prod(-1).sum())
    pixel_values = torch.randn(patches, v.in_chans * v.temporal_patch_size * v.patch_size**2, dtype=dtype)
    return TrainBatch(
        input_ids=input_ids, attention_mask=attention, mm_token_type_ids=mm_token_type_ids(input_ids, config.image_token_id),
        loss_mask=loss_mask, old_logprobs=torch.zeros((B, width)), pixel_values=pixel_values, image_grid_thw=grids,
        trajectory_ids=[str(i) for i in range(B)], truncated=torch.zeros(B, dtype=torch.bool),
    ).to(device)


def micro_batches(rows, budget: int, packed: bool):
    """Row groups: packed (balanced by tokens) or padded (greedy in order, rows x longest <= budget)."""
    if packed:
        k = max(1, math.ceil(sum(len(r[0]) for r in rows) / budget))
        bins, loads = [[] for _ in range(k)], [0] * k
        for r in sorted(rows, key=lambda r: -len(r[0])):
            j = loads.index(min(loads))
            bins[j].append(r)
            loads[j] += len(r[0])
        return [b for b in bins if b]
    groups, current, longest = [], [], 0
    for r in rows:
        if current and (len(current) + 1) * max(longest, len(r[0])) > budget:
            groups.append(current)
            current, longest = [], 0
        current.append(r)
        longest = max(longest, len(r[0]))
    return groups + [current]


def step_flops(config, model, rows) -> dict[str, float]:
    t, v = config.text_config, config.vision_config
    n_vis = sum(p.numel() for n, p in model.named_parameters() if ".visual." in f".{n}")
    n_embed = model.model.language_model.embed_tokens.weight.numel()
    n_head = t.hidden_size * t.vocab_size
    n_lm = sum(p.numel() for p in model.parameters()) - n_vis - n_embed - (0 if config.tie_word_embeddings else n_head)
    tokens = sum(len(r[0]) for r in rows)
    trained = sum(sum(r[1]) for r in rows)
    d_q = t.num_attention_heads * (t.hidden_size // t.num_attention_heads)
    lm = 6 * n_lm * tokens + 6 * t.num_hidden_layers * d_q * sum(len(r[0]) ** 2 for r in rows) + 6 * n_head * trained
    per_image = [g[1] * g[2] for r in rows for g in r[2]]
    patches = sum(per_image)
    n_full = len(v.fullatt_block_indexes)
    window = (v.window_size // v.patch_size) ** 2
    vis = 6 * n_vis * patches + 12 * v.hidden_size * (n_full * sum(p * p for p in per_image)
                                                      + (v.depth - n_full) * patches * window)
    return {"lm": lm, "vision": vis, "total": lm + vis, "tokens": tokens, "trained": trained, "patches": patches}


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_case(model, config, rows, *, packed: bool, budget: int, steps: int, warmup: int, device: str,
             dtype, chunk: int) -> dict:
    from agent_grpo.rollout.logprobs import forward_head
    from agent_grpo.rollout.packing import pack_batch, padding_share
    from agent_grpo.train.loss import grpo_loss

    groups = micro_batches(rows, budget, packed)
    batches = [to_batch(g, config, device, dtype) for g in groups]
    if packed:
        batches = [pack_batch(b) for b in batches]
    total_loss_tokens = float(sum(b.loss_mask.sum() for b in batches))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-7, fused=device.startswith("cuda"))
    model.train()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        fwd = bwd = 0.0
        sync(device)
        t_step = time.perf_counter()
        for b in batches:
            t0 = time.perf_counter()
            out = forward_head(model, b, chunk_size=chunk)
            adv = torch.linspace(-1, 1, b.loss_mask.shape[0], device=b.loss_mask.device)
            loss, _ = grpo_loss(out.logprobs, out.logprobs.detach(), adv, b.loss_mask, variant="dapo",
                                epsilon_low=0.2, epsilon_high=0.28, num_items_in_batch=total_loss_tokens)
            sync(device)
            t1 = time.perf_counter()
            loss.backward()
            sync(device)
            fwd += t1 - t0
            bwd += time.perf_counter() - t1
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        t3 = time.perf_counter()
        if i >= warmup:
            times.append({"forward": fwd, "backward": bwd, "optimizer": t3 - t2, "step": t3 - t_step})
    del optimizer
    med = {k: sorted(t[k] for t in times)[len(times) // 2] for k in times[0]}
    flops = step_flops(config, model, rows)
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return {
        **{f"{k}_s": v for k, v in med.items()},
        "micro_batches": len(batches), "padding_share": padding_share(batches),
        "tokens": flops["tokens"], "trained_tokens": flops["trained"], "patches": flops["patches"],
        "tokens_per_s": flops["tokens"] / med["step"],
        "tflops": flops["total"] / med["step"] / 1e12, "lm_tflop": flops["lm"] / 1e12, "vision_tflop": flops["vision"] / 1e12,
        "mfu_spec": flops["total"] / med["step"] / PEAK_SPEC, "mfu_measured": flops["total"] / med["step"] / PEAK_MEASURED,
        "peak_mem_gib": peak_mem,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="3b,7b")
    ap.add_argument("--modes", default="packed,padded,packed-flex",
                    help="comma list of packed (the --attn attention), padded, packed-flex (flex attention)")
    ap.add_argument("--attn", default="auto", help="auto: flash_attention_2 when flash_attn imports, else sdpa")
    ap.add_argument("--trajectories", type=int, default=16)
    ap.add_argument("--image-px", type=int, default=812)
    ap.add_argument("--crop-px", type=int, default=448)
    ap.add_argument("--max-turns", type=int, default=4)
    ap.add_argument("--micro-batch-tokens", type=int, default=16384)
    ap.add_argument("--lm-ckpt", default="7b", help="sizes (comma list) whose language model is checkpointed")
    ap.add_argument("--vision-ckpt", default="3b,7b", help="sizes whose vision tower is checkpointed")
    ap.add_argument("--chunk", type=int, default=2048, help="logprob-head positions per chunk")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="CPU dry run with tiny sizes (seconds)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.quick else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if args.quick:
        torch.set_num_threads(1)
        args.sizes, args.trajectories, args.image_px, args.crop_px = "quick", 3, 112, 56
        args.micro_batch_tokens, args.steps, args.warmup, args.max_turns, args.chunk = 2048, 1, 0, 2, 256
        args.modes = "packed,padded"  # flex attention compiles: GPU only
    attn = args.attn
    if attn == "auto":
        try:
            import flash_attn  # noqa: F401

            attn = "flash_attention_2"
        except ImportError:
            attn = "sdpa"
    rows_out = []
    print(f"device {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}), {dtype}, attention {attn}, "
          f"torch {torch.__version__}")
    for size in args.sizes.split(","):
        config = make_config(size)
        model = make_model(config, device, dtype, attn)
        ckpt = (size in args.lm_ckpt.split(","), size in args.vision_ckpt.split(","))
        if any(ckpt):
            from agent_grpo.train.policy import set_gradient_checkpointing

            set_gradient_checkpointing(model, *ckpt)
        n_params = sum(p.numel() for p in model.parameters())
        rows = make_trajectory_batch(config, args.trajectories, args.image_px, args.crop_px, args.max_turns)
        for mode in args.modes.split(","):
            case_attn = "flex_attention" if mode == "packed-flex" else attn
            case = {"size": size, "params_b": n_params / 1e9, "mode": mode, "attn": case_attn,
                    "grad_ckpt": "+".join(n for n, on in zip(("lm", "vision"), ckpt, strict=True) if on) or "none"}
            try:
                if case_attn != attn:  # flex attention skips the blocks the packed mask hides (compiled by torch)
                    model.set_attn_implementation(case_attn)
                case |= run_case(model, config, rows, packed=mode.startswith("packed"), budget=args.micro_batch_tokens,
                                 steps=args.steps, warmup=args.warmup, device=device, dtype=dtype, chunk=args.chunk)
            except Exception as e:  # one failing case (e.g. out of memory) must not hide the others
                case["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                if device == "cuda":
                    torch.cuda.empty_cache()
            finally:
                if case_attn != attn:
                    model.set_attn_implementation(attn)
            rows_out.append(case)
            print(json.dumps(case), flush=True)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    print("\n| size | mode | attn | ckpt | tokens | micro-batches | padding | fwd s | bwd s | opt s | step s | tokens/s "
          "| TFLOP/s | MFU (989) | MFU (790) | peak GiB |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows_out:
        if "error" in r:
            print(f"| {r['size']} | {r['mode']} | {r['attn']} | {r['grad_ckpt']} | {r['error']} |")
            continue
        print(f"| {r['size']} | {r['mode']} | {r['attn']} | {r['grad_ckpt']} | {r['tokens']} | {r['micro_batches']} "
              f"| {r['padding_share']:.1%} | {r['forward_s']:.2f} | {r['backward_s']:.2f} | {r['optimizer_s']:.2f} "
              f"| {r['step_s']:.2f} | {r['tokens_per_s']:.0f} | {r['tflops']:.0f} | {r['mfu_spec']:.1%} "
              f"| {r['mfu_measured']:.1%} | {r['peak_mem_gib']:.1f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows_out}, indent=1))
    return 1 if any("error" in r for r in rows_out) and args.quick else 0


if __name__ == "__main__":
    sys.exit(main())
