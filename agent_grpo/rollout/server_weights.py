"""How the trainer's weights reach the generation server after each optimizer step.

- `file` (CPU, and any layout where trainer and server share a filesystem; the one tested here): the full
  weights (Hugging Face naming, LoRA merged, `vllm_engine.full_weights`) are written to a safetensors file
  under a temporary name, flushed to disk and renamed, so the server can never read a torn file; then
  `POST /sync {path, version}` makes the server load it, `reload_weights`, and reset its prefix and
  multimodal caches. On one machine, a folder on `/dev/shm` keeps the file in shared memory (tmpfs).
- `nccl` (GPUs; NOT TESTED here, no GPU in CI): vLLM's weight-transfer engine broadcasts the tensors from
  the trainer (rank 0) to the server's workers over NCCL; our HTTP server relays the control calls
  (`/weights/nccl/...`) to its workers. Needs vLLM and CUDA on the trainer's side too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch


def write_weights_file(tensors: Iterable[tuple[str, torch.Tensor]], path: Path) -> Path:
    """Safetensors file of `tensors` at `path`, atomically: written as `path.tmp`, fsynced, renamed."""
    from safetensors.torch import save_file

    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in tensors:
        t = tensor.detach().to("cpu").contiguous()
        if t.data_ptr() in seen:  # tied weights share storage; safetensors refuses shared tensors
            t = t.clone()
        seen.add(t.data_ptr())
        out[name] = t
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(out, str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


class NCCLSender:
    """Trainer side of the `nccl` transport (UNTESTED: needs two CUDA processes).

    Wraps vLLM's `NCCLTrainerWeightTransferEngine`; `client` is anything with vLLM's
    `VLLMWeightSyncClient` methods (here `ServerEngine`'s relay to `/weights/nccl/...`).
    """

    def __init__(self, client, master_address: str, master_port: int, world_size: int):
        from vllm.distributed.weight_transfer.nccl_engine import (
            NCCLTrainerInitInfo,
            NCCLTrainerWeightTransferEngine,
        )

        self._source = _FullWeights()
        info = NCCLTrainerInitInfo(master_address=master_address, master_port=master_port, world_size=world_size)
        self.engine = NCCLTrainerWeightTransferEngine.trainer_init(info, client=client, source=self._source)

    def send(self, model) -> None:
        self._source.model = model
        self.engine.send_weights()

    def close(self) -> None:
        self.engine.shutdown()


def _FullWeights():  # noqa: N802 - builds a vLLM WeightSource subclass only where vLLM is installed
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

    from agent_grpo.rollout.vllm_engine import full_weights

    class FullWeights(WeightSource):
        """The model's full weights (LoRA merged), on its device, in checkpoint naming."""

        model = None

        def metadata(self) -> list[ParamMeta]:
            return [ParamMeta(name=n, dtype=t.dtype, shape=tuple(t.shape)) for n, t in full_weights(self.model)]

        def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
            yield from full_weights(self.model)

    return FullWeights()
