"""Under FSDP the vLLM engine gets the full weights from the shards one weight at a time.

Two processes (FSDP2 over gloo, CPU) shard the tiny model; `full_weights` (what `VLLMEngine.sync_weights`
sends) must yield every weight whole and equal to the unsharded model's, LoRA merged, while at most one
gathered weight is alive at a time: the extra memory of a sync is bounded by the largest parameter,
not the model. A stand-in engine copies each weight and drops it, as vLLM's `reload_weights` does.
"""

from __future__ import annotations

import json
import os
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.slow
WORLD = 2


def receive(weights) -> tuple[dict[str, torch.Tensor], int]:
    """A stand-in engine: copy each weight into its own storage; the peak bytes of the sender's tensors alive."""
    live, peak, got = [0], [0], {}

    def freed(n: int) -> None:
        live[0] -= n

    for name, tensor in weights:
        n = tensor.numel() * tensor.element_size()
        live[0] += n
        peak[0] = max(peak[0], live[0])
        weakref.finalize(tensor, freed, n)
        got[name] = tensor.detach().clone()
        del tensor
    return got, peak[0]


def lora(model):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)"))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            # From one generator, so every process holds the same adapters (PEFT draws A from the global RNG);
            # B non-zero as after training, so the merge changes the weights.
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model


def worker(rank: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        for case in ("full", "lora"):
            one_case(rank, out, case)
    finally:
        dist.destroy_process_group()


def one_case(rank: int, out: str, case: str) -> None:
    from agent_grpo.models.tiny import build_tiny_model
    from agent_grpo.rollout.vllm_engine import full_weights
    from agent_grpo.train.fsdp import is_sharded, shard_model

    model, _ = build_tiny_model(size="S", seed=0)
    if case == "lora":
        model = lora(model)
    want = {k: v.clone() for k, v in full_weights(model)}  # unsharded: the reference
    largest = max(v.numel() * v.element_size() for v in want.values())
    total = sum(v.numel() * v.element_size() for v in want.values())
    shard_model(model, SimpleNamespace(transformer_cls_names_to_wrap=None, reshard_after_forward=True))
    assert is_sharded(model)
    got, peak = receive(full_weights(model))
    result = {
        "names_equal": list(got) == list(want),
        "unequal": [k for k in want if k not in got or not torch.equal(got[k], want[k])],
        "peak": peak, "largest": largest, "total": total,
    }
    Path(out, f"{case}.rank{rank}.json").write_text(json.dumps(result))


def test_sharded_model_reaches_the_engine_whole_and_one_weight_at_a_time(tmp_path):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    init = f"file://{tmp_path / 'store'}"
    mp.spawn(worker, args=(init, str(tmp_path)), nprocs=WORLD, join=True)
    for case in ("full", "lora"):
        for rank in range(WORLD):
            r = json.loads((tmp_path / f"{case}.rank{rank}.json").read_text())
            assert r["names_equal"] and r["unequal"] == []  # every weight whole, in HF naming, LoRA merged
            assert r["peak"] <= r["largest"] < r["total"] / 2  # one gathered weight alive at a time
            print(f"{case} rank {rank}: peak {r['peak']} B of gathered weights alive; "
                  f"largest weight {r['largest']} B; model {r['total']} B")
