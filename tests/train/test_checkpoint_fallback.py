"""Resume takes the newest *complete* checkpoint and says which it skipped; a killed save leaves no
`.tmp_step_*` behind once the run saves or resumes again (issue 15 item 6)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from agent_grpo.train import checkpoint as ck


class TinyModel:
    """What save_checkpoint needs of a model: `save_pretrained` writing a config and safetensors weights."""

    def __init__(self):
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 3)

    def save_pretrained(self, path, safe_serialization=True):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "config.json").write_text("{}")
        save_file({k: v.contiguous() for k, v in self.lin.state_dict().items()}, str(Path(path) / "model.safetensors"))


def trained(model: TinyModel) -> torch.optim.Optimizer:
    opt = torch.optim.AdamW(model.lin.parameters(), lr=0.1)
    model.lin(torch.ones(2, 4)).sum().backward()
    opt.step()
    return opt


def save(out: Path, step: int, keep: int = 5) -> Path:
    model = TinyModel()
    return ck.save_checkpoint(out, step, model, None, trained(model), None, extra={"data_position": step}, keep=keep)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _drop_rng(ckpt: Path) -> None:
    state = json.loads((ckpt / ck.STATE_FILE).read_text())
    del state["rng"]
    (ckpt / ck.STATE_FILE).write_text(json.dumps(state))


DAMAGE = {
    "truncated weights": lambda c: _truncate(c / "model" / "model.safetensors"),
    "truncated optimizer": lambda c: _truncate(c / "optimizer.safetensors"),
    "truncated state": lambda c: _truncate(c / ck.STATE_FILE),
    "no rng": _drop_rng,
    "no model": lambda c: shutil.rmtree(c / "model"),
    "no weights": lambda c: (c / "model" / "model.safetensors").unlink(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_and_says_so(damage, tmp_path):
    for step in (1, 2, 3):
        save(tmp_path, step)
    newest = tmp_path / "checkpoints" / "step_000003"
    DAMAGE[damage](newest)
    ckpt, notes = ck.resume_checkpoint(tmp_path)
    assert ckpt == tmp_path / "checkpoints" / "step_000002"
    assert any("step_000003" in n and "incomplete" in n for n in notes), notes
    assert ck.latest_checkpoint(tmp_path) == ckpt
    model = TinyModel()
    state = ck.load_training_state(ckpt, trained(model), None)  # the fallback really loads
    assert state["step"] == 2 and state["data_position"] == 2


def test_no_complete_checkpoint_means_a_fresh_start(tmp_path):
    save(tmp_path, 1)
    _drop_rng(tmp_path / "checkpoints" / "step_000001")
    assert ck.resume_checkpoint(tmp_path)[0] is None


def test_a_killed_save_leaves_nothing_once_the_run_goes_on(tmp_path, monkeypatch):
    save(tmp_path, 1)
    real = ck.save_file

    def killed(*a, **k):
        raise KeyboardInterrupt  # the process dies while writing the optimizer state

    monkeypatch.setattr(ck, "save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 2)
    monkeypatch.setattr(ck, "save_file", real)
    root = tmp_path / "checkpoints"
    assert (root / ".tmp_step_000002").is_dir()
    assert ck.latest_checkpoint(tmp_path) == root / "step_000001"
    ckpt, notes = ck.resume_checkpoint(tmp_path)  # resuming cleans up ...
    assert ckpt == root / "step_000001" and any(".tmp_step_000002" in n for n in notes)
    assert not list(root.glob(".tmp_*"))
    (root / ".tmp_step_000007").mkdir()  # ... and so does the next save, whatever step it was
    save(tmp_path, 2)
    assert sorted(p.name for p in root.iterdir()) == ["step_000001", "step_000002"]
