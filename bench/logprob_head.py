"""Memory of the logprob head: the former full-logits head vs the chunked one (issue 13).

    /work/bin/py bench/logprob_head.py                    # 152,064 vocabulary, hidden 1024, one 4096-token row
    /work/bin/py bench/logprob_head.py --quick            # seconds (CI)

What runs: hidden states `[1, T, H]` (requires grad) and an lm_head weight `[V, H]` (requires grad), float32,
every position after the first trained (the worst case for the chunked head: N = T - 1 positions), loss
`sum(logprobs * u)` with a fixed random `u`. "full" is the former head (`full_logits_head` on
`F.linear(hidden, W)`: [1, T, V] logits, log-softmax, gather, entropy); "chunked" is `ChunkedTokenLogprobs`
(what `forward_head` calls) with `--chunk` positions per chunk. Forward + backward of each runs in its own
subprocess; memory = peak resident set size (`getrusage(RUSAGE_SELF).ru_maxrss`, the kernel's high-water mark)
minus the RSS just before the head runs (inputs, weight and the `u` vector already allocated). torch frees
large CPU tensors back to the OS (mmap), so the difference is the head's own peak. Each subprocess saves
logprobs and both gradients (safetensors); the parent compares them.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_one(kind: str, vocab: int, hidden: int, tokens: int, chunk: int, out: str) -> None:
    from safetensors.torch import save_file

    from agent_grpo.rollout.logprobs import ChunkedTokenLogprobs, full_logits_head

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    h = (torch.randn(1, tokens, hidden, generator=g) * 0.5).requires_grad_(True)
    w = (torch.randn(vocab, hidden, generator=g) / hidden**0.5).requires_grad_(True)
    ids = torch.randint(0, vocab, (1, tokens), generator=g)
    u = torch.randn(1, tokens, generator=g)
    u[:, 0] = 0.0
    w.grad = torch.zeros_like(w)  # the gradient buffer exists before the clock: it is not the head's memory
    h.grad = torch.zeros_like(h)
    base = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    if kind == "full":
        lp, ent = full_logits_head(torch.nn.functional.linear(h, w), ids)
    else:
        lp1, ent1, _ = ChunkedTokenLogprobs.apply(h[0, :-1], w, ids[0, 1:], 1.0, chunk)
        lp = torch.cat([torch.zeros(1), lp1])[None]
        ent = torch.cat([torch.zeros(1), ent1])[None]
    (lp * u).sum().backward()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    save_file({"lp": lp.detach().contiguous(), "ent": ent.detach().contiguous(), "gh": h.grad, "gw": w.grad}, out)
    print(json.dumps({"kind": kind, "extra_bytes": peak - base, "seconds": seconds}))


def exact_weight_grad_rows(vocab: int, hidden: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The lm_head weight gradient in float64 for a sample of vocabulary rows: every sampled token's row (where
    the gradient is largest) and 1024 random others. Float32 heads differ from each other by summation order
    alone; this says which of the two is nearer the exact value. d sum(u lp) / d logit[t, v] =
    u_t (1[v = y_t] - p_tv), so a row needs only the float64 log-normaliser of every position (chunked over V)."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)  # the same draws as run_one
    h = (torch.randn(1, tokens, hidden, generator=g) * 0.5)[0, :-1].double()
    w = torch.randn(vocab, hidden, generator=g) / hidden**0.5
    ids = torch.randint(0, vocab, (1, tokens), generator=g)[0, 1:]
    u = torch.randn(1, tokens, generator=g)[0, 1:].double()
    lse = torch.full((len(h),), -torch.inf, dtype=torch.float64)
    for start in range(0, vocab, 8192):
        lse = torch.logaddexp(lse, torch.logsumexp(h @ w[start:start + 8192].double().T, dim=-1))
    rows = torch.unique(torch.cat([ids, torch.randperm(vocab, generator=torch.Generator().manual_seed(1))[:1024]]))
    p = torch.exp(h @ w[rows].double().T - lse[:, None])  # [T-1, rows]
    onehot = (ids[:, None] == rows[None, :]).double()
    return rows, ((u[:, None] * (onehot - p)).T @ h)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, default=152064)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.vocab, args.hidden, args.tokens, args.chunk = 4096, 64, 512, 128
    if args._child:
        run_one(args._child[0], args.vocab, args.hidden, args.tokens, args.chunk, args._child[1])
        return
    from safetensors.torch import load_file

    logits_bytes = args.tokens * args.vocab * 4
    rows, saved = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        procs = {}
        for kind in ("full", "chunked"):  # side by side: each measures its own process's peak
            cmd = [sys.executable, __file__, "--vocab", str(args.vocab), "--hidden", str(args.hidden),
                   "--tokens", str(args.tokens), "--chunk", str(args.chunk), "--_child", kind, f"{tmp}/{kind}.st"]
            procs[kind] = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        for kind, proc in procs.items():
            stdout, _ = proc.communicate()
            if proc.returncode:
                raise SystemExit(f"{kind} run failed ({proc.returncode})")
            rows.append(json.loads(stdout.strip().splitlines()[-1]))
            saved[kind] = load_file(f"{tmp}/{kind}.st")
    full, chunked = saved["full"], saved["chunked"]
    diffs = {k: float((full[k] - chunked[k]).abs().max()) for k in ("lp", "ent", "gh", "gw")}
    rows64, exact = exact_weight_grad_rows(args.vocab, args.hidden, args.tokens)
    err64 = {kind: {"max": float((saved[kind]["gw"][rows64].double() - exact).abs().max()),
                    "rms": float((saved[kind]["gw"][rows64].double() - exact).pow(2).mean().sqrt())}
             for kind in ("full", "chunked")}
    scale = {k: float(full[k].abs().max()) for k in ("gh", "gw")}
    ratio = rows[1]["extra_bytes"] / rows[0]["extra_bytes"]
    print(f"vocab {args.vocab}, hidden {args.hidden}, one row of {args.tokens} tokens, float32, chunk {args.chunk}; "
          f"one fp32 [T, V] logits tensor = {logits_bytes / 2**30:.2f} GiB\n")
    print("| head | peak extra memory, GiB | x one logits tensor | fwd+bwd s |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['kind']} | {r['extra_bytes'] / 2**30:.2f} | {r['extra_bytes'] / logits_bytes:.2f} | {r['seconds']:.1f} |")
    print(f"\nchunked / full memory: {ratio:.3f} (goal <= 0.25)")
    print(f"max |diff|: logprobs {diffs['lp']:.2e}, entropy {diffs['ent']:.2e}, grad hidden {diffs['gh']:.2e} "
          f"(max |grad| {scale['gh']:.2e}), grad weight {diffs['gw']:.2e} (max |grad| {scale['gw']:.2e})")
    print(f"grad weight vs float64 (rows of the {len(rows64)} sampled tokens and 1024 others): "
          f"full head max {err64['full']['max']:.2e} / rms {err64['full']['rms']:.2e}, "
          f"chunked head max {err64['chunked']['max']:.2e} / rms {err64['chunked']['rms']:.2e}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows, "diffs": diffs,
                                         "ratio": ratio, "grad_weight_vs_float64": err64}, indent=1, default=str))
    if not args.quick and (ratio > 0.25 or diffs["lp"] > 1e-6):  # tiny sizes: fixed costs dominate
        sys.exit(1)


if __name__ == "__main__":
    main()
