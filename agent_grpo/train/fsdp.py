"""FSDP for the GRPO recipe: FSDP2 (`torch.distributed.fsdp.fully_shard`) on GPU (NCCL) and CPU (gloo).

Launched with `accelerate launch --config_file examples/accelerate/fsdp_*.yaml` (docs/scaling.md). The
recipe shards the model itself rather than through `accelerator.prepare`, because accelerate runs an
FSDP launch on CPU as plain DDP (`Accelerator(cpu=True)` ignores `distributed_type: FSDP`): one code
path on both lets the 2-process CPU test stand for the GPU run. The launch config's `fsdp_config`
still says what to do, read through accelerate's `FullyShardedDataParallelPlugin`.

- Units: every module whose class is in `fsdp_transformer_layer_cls_to_wrap` (default: the model's
  `_no_split_modules`, the decoder layers and vision blocks) is an FSDP unit; the root holds the rest
  (embeddings, final norm, head). `fsdp_reshard_after_forward: true` frees the gathered weights of a
  unit after its forward (ZeRO-3); `false` keeps them until the backward (ZeRO-2).
- Rollouts: each process generates with a full-weight copy of the policy that `copy_full_weights`
  refreshes after every optimizer step (see that function for why a copy). The copy is also what
  checkpoints save, so the model folder stays an ordinary Hugging Face checkpoint.
- Update: every forward and backward of the sharded module is a collective, so `grpo_update` runs as
  many micro-batches on every process as on the busiest one (step.py).
- Checkpoints: the optimizer state is gathered whole to the main process and stored in the same
  no-pickle format as without FSDP (`checkpoint.py`), then scattered back into shards on resume.
"""

from __future__ import annotations

import os

import torch
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from agent_grpo.errors import ConfigError


def fsdp_plugin(accelerator) -> FullyShardedDataParallelPlugin | None:
    """The launch config's FSDP settings, or None when the run was not launched with FSDP.

    On CPU, accelerate reports such a launch as MULTI_CPU and keeps no plugin; `accelerate launch`
    still exported the settings (`FSDP_*` variables), which the plugin reads."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return accelerator.state.fsdp_plugin
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return FullyShardedDataParallelPlugin()
    return None


def check_fsdp(plugin: FullyShardedDataParallelPlugin, mixed_precision: str) -> None:
    """Refuse the FSDP settings the recipe does not implement, naming each fix."""
    from torch.distributed.fsdp import CPUOffloadPolicy
    from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy

    fixes = []
    if plugin.fsdp_version != 2:
        fixes.append("fsdp_version: 2 (FSDP1 is not supported)")
    if mixed_precision != "no":
        # Sharding bypasses accelerate's autocast, and the full-weight copy and the checkpoints
        # are in the model's own dtype: one dtype, set by the training config, keeps resumes exact.
        fixes.append("mixed_precision: 'no' (set the dtype with model.dtype, e.g. bfloat16)")
    if plugin.cpu_ram_efficient_loading:
        # transformers would load the weights on the main process only; every process needs them.
        fixes.append("fsdp_cpu_ram_efficient_loading: false")
    offload = plugin.cpu_offload  # FSDP2: an OffloadPolicy; FSDP1: CPUOffload(offload_params)
    if isinstance(offload, CPUOffloadPolicy) or getattr(offload, "offload_params", False):
        fixes.append("fsdp_offload_params: false")
    if plugin.activation_checkpointing:
        fixes.append("fsdp_activation_checkpointing: false (use model.gradient_checkpointing: true)")
    if getattr(plugin.auto_wrap_policy, "func", plugin.auto_wrap_policy) is size_based_auto_wrap_policy:
        fixes.append("fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP")
    if fixes:
        raise ConfigError(
            "GRPORecipe's FSDP needs, in the accelerate config: "
            + "; ".join(fixes)
            + " (see examples/accelerate/fsdp_gpu.yaml and docs/scaling.md)"
        )


def shard_model(model: torch.nn.Module, plugin: FullyShardedDataParallelPlugin) -> torch.nn.Module:
    """Shard `model` in place over all processes (FSDP2): its parameters become DTensor shards."""
    from torch.distributed.fsdp import fully_shard

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under PEFT's wrapper
    names = set(plugin.transformer_cls_names_to_wrap or getattr(base, "_no_split_modules", None) or ())
    units = [m for m in model.modules() if type(m).__name__ in names]
    missing = names - {type(m).__name__ for m in units}
    if missing:
        raise ConfigError(
            f"fsdp_transformer_layer_cls_to_wrap names {sorted(missing)}, which {type(base).__name__} does not "
            f"contain; its layer classes are {sorted(getattr(base, '_no_split_modules', None) or [])}"
        )
    for module in units:  # layers are never nested in one another, so the order does not matter
        fully_shard(module, reshard_after_forward=plugin.reshard_after_forward)
    fully_shard(model)  # the root: whatever no unit holds
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def gathered(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: an FSDP2 shard (DTensor) is all-gathered (a collective), a plain tensor is returned as is."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


@torch.no_grad()
def copy_full_weights(sharded: torch.nn.Module, full: torch.nn.Module) -> None:
    """Gather the trained weights of `sharded` into `full`, the generation copy (a collective).

    Why a copy: generating with the sharded module would all-gather every unit in every forward, and
    processes generate different numbers of tokens and turns, so their collectives would not line up
    (deadlock). A plain module holds the weights whole and has no FSDP hooks, so each process generates
    on its own, and `transformers.generate` does not turn on `synced_gpus`. Unsharding the FSDP module
    in place for the rollout would save the copy's memory during the update, but it means switching
    FSDP's per-unit reshard-after-forward off and back; the copy uses public APIs only. Its cost: the
    full weights stay in memory on every process (docs/scaling.md).
    """
    from torch.distributed.tensor import DTensor

    target = dict(full.named_parameters())
    for name, p in sharded.named_parameters():  # same order on every process: the all-gathers line up
        if p.requires_grad:  # frozen weights never change
            target[name].copy_(p.full_tensor() if isinstance(p, DTensor) else p)
