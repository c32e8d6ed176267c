"""Checkpoints without pickle: the model in Hugging Face format, everything else safetensors + JSON.

Layout of `OUT/checkpoints/step_000050/`:
    model/                 save_pretrained (full weights, or the LoRA adapter) + processor files
    optimizer.safetensors  optimizer state tensors, keyed `state.<param index>.<name>`
    trainer_state.json     step, data position, optimizer param groups, scheduler state, Python/NumPy RNG
    (the torch CPU and CUDA RNG states are tensors in optimizer.safetensors)
A checkpoint is written to a temporary folder and renamed into place, so a run killed while saving
keeps its previous checkpoint intact. `latest_checkpoint` returns the newest *complete* checkpoint:
one whose trainer_state.json parses and holds the step, optimizer groups and RNG states, whose
`model/` holds a config and weights, and whose safetensors files are as long as their headers
say (a truncated copy or a damaged disk is skipped; `resume_checkpoint` says which and why). The
`.tmp_step_*` folder a killed save leaves is removed by the next save or resume.

Under FSDP (`fsdp.py`) the optimizer state is sharded like the parameters: `full_optimizer_state_dict`
gathers it whole into the same index-keyed layout before saving, and `load_training_state` scatters it
back into shards, so a checkpoint does not depend on how the run was launched.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from agent_grpo.errors import StoreError

STATE_FILE = "trainer_state.json"


def _param_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each optimizer parameter, in the order `optimizer.state_dict()` numbers them."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_optimizer_state_dict(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """`optimizer.state_dict()` of an optimizer over FSDP-sharded `model`, with whole tensors.

    A collective: every process calls it; the main process gets the state, the others an empty one.
    torch numbers parameters by name here; they are renumbered as `optimizer.state_dict()` does."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    sd = get_optimizer_state_dict(model, optimizer, options=options)
    index = {name: i for i, name in enumerate(_param_names(model, optimizer))}
    return {
        "state": {index[name]: state for name, state in sd.get("state", {}).items()},
        "param_groups": [
            {**g, "params": [index[n] for n in g["params"]]} for g in sd.get("param_groups", [])
        ],
    }


def _load_sharded_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, sd: dict) -> None:
    """Load a whole, index-keyed optimizer state into an optimizer over FSDP-sharded `model`; each
    process keeps its shard of every tensor."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = _param_names(model, optimizer)
    by_name = {
        "state": {names[i]: state for i, state in sd["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def _optimizer_tensors(optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"state.{idx}.{name}"] = t.detach().cpu().contiguous()
    return tensors, sd["param_groups"]


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    np_state = np.random.get_state()
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    plain = {
        "python": _jsonable(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    return tensors, plain


def _jsonable(x):
    if isinstance(x, tuple | list):
        return [_jsonable(v) for v in x]
    return x


def _tupled(x):
    if isinstance(x, list):
        return tuple(_tupled(v) for v in x)
    return x


def save_checkpoint(
    out_dir: Path, step: int, model, processor, optimizer, scheduler, extra: dict[str, Any], keep: int = 2
) -> Path:
    """Write checkpoint `step` atomically and keep the newest `keep` checkpoints.

    `optimizer`: the optimizer, or its state dict (`full_optimizer_state_dict` under FSDP)."""
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}"
    remove_unfinished(out_dir)
    tmp.mkdir()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per save would scroll the training progress bar away
    model.save_pretrained(tmp / "model", safe_serialization=True)
    if processor is not None:
        processor.save_pretrained(tmp / "model")
    opt_tensors, groups = _optimizer_tensors(optimizer)
    rng_tensors, rng_plain = _rng_state()
    save_file({**opt_tensors, **rng_tensors}, str(tmp / "optimizer.safetensors"))
    state = {
        "step": step,
        "param_groups": groups,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_plain,
        **extra,
    }
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, default=_json_default))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _json_default(x):
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot store {type(x).__name__} in {STATE_FILE}")


def checkpoint_step(ckpt: Path) -> int:
    """The step of a checkpoint folder written by `save_checkpoint` (`step_000050` -> 50)."""
    return int(Path(ckpt).name.removeprefix("step_"))


_NAME = re.compile(r"step_(\d+)")


def remove_unfinished(out_dir: Path) -> list[Path]:
    """Remove the `.tmp_step_*` folders of saves that were killed; returns them."""
    root = Path(out_dir) / "checkpoints"
    gone = [p for p in root.glob(".tmp_step_*") if p.is_dir() and not p.is_symlink()]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why training cannot resume from `ckpt`, or None if it is complete (see the module docstring)."""
    ckpt = Path(ckpt)
    try:
        state = json.loads((ckpt / STATE_FILE).read_text())
    except (OSError, ValueError) as e:
        return f"{STATE_FILE} is missing or unreadable ({type(e).__name__})"
    if not isinstance(state, dict):
        return f"{STATE_FILE} is not a JSON object"
    rng = state.get("rng")
    if not isinstance(rng, dict) or not {"python", "numpy"} <= rng.keys():
        return f"{STATE_FILE} has no Python/NumPy 'rng' state"
    if not isinstance(state.get("step"), int) or not isinstance(state.get("param_groups"), list):
        return f"{STATE_FILE} has no 'step' or 'param_groups'"
    model = ckpt / "model"
    if not model.is_dir():
        return "it has no model/ folder"
    if not ((model / "config.json").is_file() or (model / "adapter_config.json").is_file()):
        return "model/ has no config.json or adapter_config.json"
    weights = sorted(model.glob("*.safetensors"))
    if not weights:
        return "model/ holds no *.safetensors weights"
    for path in [*weights, ckpt / "optimizer.safetensors"]:
        problem = _safetensors_problem(path)
        if problem:
            return f"{path.relative_to(ckpt)} {problem}"
    index = model / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"{index.name} is unreadable"
        if missing := sorted(f for f in files if not (model / f).is_file()):
            return f"model/ lacks the weight files {missing}"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """None if `path` is a whole safetensors file: a header, then as many bytes as it describes."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                return "is truncated (in its header)"
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as e:
        return f"is missing or unreadable ({type(e).__name__})"
    try:
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, AttributeError):
        return "has a malformed header"
    return None if size == 8 + n + end else f"is {size} bytes, its header describes {8 + n + end} (truncated?)"


def resume_checkpoint(out_dir: Path, clean: bool = True) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint, and a note for each newer one skipped (and why).

    `clean`: also remove unfinished `.tmp_step_*` folders (the main process, once)."""
    notes = []
    if clean:
        notes += [f"removed {p}, the unfinished save of a killed run" for p in remove_unfinished(out_dir)]
    root = Path(out_dir) / "checkpoints"
    found = sorted((int(m.group(1)), p) for p in root.glob("step_*") if p.is_dir() and (m := _NAME.fullmatch(p.name)))
    for _, ckpt in reversed(found):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            if notes and any(n.startswith("checkpoint") for n in notes):
                notes.append(f"resuming from {ckpt}, the newest complete checkpoint")
            return ckpt, notes
        notes.append(f"checkpoint {ckpt} is incomplete ({problem}); skipped")
    return None, notes


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint in `out_dir` (None if there is none)."""
    return resume_checkpoint(out_dir, clean=False)[0]


def load_training_state(ckpt: Path, optimizer, scheduler, sharded_model=None) -> dict[str, Any]:
    """Restore optimizer, scheduler and RNG states; returns the JSON state (step, data position, ...).

    `sharded_model`: the FSDP-sharded model when `optimizer` holds its shards."""
    try:
        state = json.loads((ckpt / STATE_FILE).read_text())
        tensors = load_file(str(ckpt / "optimizer.safetensors"))
    except (OSError, ValueError) as e:
        raise StoreError(f"checkpoint {ckpt} is unreadable: {e}") from e
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = value
    opt_sd = {"state": opt_state, "param_groups": state["param_groups"]}
    if sharded_model is not None:
        _load_sharded_optimizer_state(sharded_model, optimizer, opt_sd)
    else:
        optimizer.load_state_dict(opt_sd)
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count()) if f"rng.cuda.{i}" in tensors]
    if cuda and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    py = state["rng"]["python"]
    random.setstate(_tupled(py))
    npst = state["rng"]["numpy"]
    np.random.set_state((npst[0], np.array(npst[1], dtype=np.uint32), *npst[2:]))
    return state
