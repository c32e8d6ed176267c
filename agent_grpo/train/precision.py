"""Precision levers: fp32 master weights for a bf16/fp16 model (docs/scaling.md).

`MasterWeightAdamW` is AdamW over float32 copies of the model's low-precision parameters. Each
backward's gradient is added into the master's float32 `.grad` as soon as it is accumulated (a
post-accumulate-grad hook) and the low-precision `.grad` is freed, so gradient accumulation over
micro-batches, clipping and the update all run in float32; after each step the masters are rounded
back into the model. Memory per trained parameter: 2 (bf16 weight) + 4 (master) + 4 (fp32 grad) +
8 (Adam moments) = 18 bytes, against 2 + 2 + 4 (bf16 Adam moments) = 8 for plain bf16 AdamW.

The masters are saved with the optimizer state (`state.<i>.master`), so a resumed run continues from
the float32 weights, not from their bf16 rounding. One process only: DDP all-reduces `param.grad`
itself, which the hook empties (FSDP's own mixed precision would be the way there; not wired).
"""

from __future__ import annotations

import torch

from agent_grpo.errors import ConfigError


class MasterWeightAdamW(torch.optim.AdamW):
    def __init__(self, params, **adamw):
        self.model_params = [p for p in params if p.requires_grad]
        masters = [p.detach().float().clone().requires_grad_(True) for p in self.model_params]
        super().__init__(masters, **adamw)
        self.masters = masters
        for p, m in zip(self.model_params, masters, strict=True):
            p.register_post_accumulate_grad_hook(self._into_master(m))

    @staticmethod
    def _into_master(master: torch.Tensor):
        def hook(p: torch.Tensor) -> None:
            if master.grad is None:
                master.grad = p.grad.float()
            else:
                master.grad.add_(p.grad)
            p.grad = None

        return hook

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        for p, m in zip(self.model_params, self.masters, strict=True):
            p.copy_(m)
        return loss

    def state_dict(self):
        sd = super().state_dict()
        for i, m in enumerate(self.masters):
            sd["state"].setdefault(i, {})["master"] = m.detach().clone()
        return sd

    def load_state_dict(self, state_dict):
        state_dict = {**state_dict, "state": {k: dict(v) for k, v in state_dict["state"].items()}}
        saved = {int(i): s.pop("master") for i, s in state_dict["state"].items() if "master" in s}
        state_dict["state"] = {k: v for k, v in state_dict["state"].items() if v}
        super().load_state_dict(state_dict)
        with torch.no_grad():
            for i, value in saved.items():
                self.masters[i].copy_(value)
                self.model_params[i].copy_(value)


def build_optimizer(params, optim_cfg, model_cfg, num_processes: int = 1) -> torch.optim.Optimizer:
    """AdamW over `params` as the config says: plain, or over float32 masters (`model.master_weights`)."""
    adamw = {"lr": optim_cfg.lr, "betas": optim_cfg.betas, "weight_decay": optim_cfg.weight_decay}
    if getattr(model_cfg, "master_weights", "model") == "float32" and model_cfg.dtype != "float32":
        if num_processes > 1:
            raise ConfigError(
                "model.master_weights: float32 runs in one process only (DDP/FSDP reduce the gradients the "
                "master copies take); use model.master_weights: model under accelerate launch"
            )
        return MasterWeightAdamW(params, **adamw)
    return torch.optim.AdamW(params, **adamw)
