"""The perception-pretrained tiny VLM shipped with visual-search, and the script that made it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from agent_grpo_envs import VisualSearchConfig, VisualSearchEnv
from agent_grpo_envs.visual_search import pretrain as P
from safetensors.torch import load_file

from agent_grpo.models.chat import ChatFormat
from agent_grpo.models.loading import load_policy

SHIPPED = Path(P.__file__).parent / "perception"


def test_shipped_checkpoint_records_how_it_was_made_and_what_it_reads():
    report = json.loads((SHIPPED / "pretrain_report.json").read_text())
    assert report["command"].startswith("agent-grpo visual-search pretrain") and "--seed 0" in report["command"]
    assert report["steps"] == 3000 and report["data"]["kinds"] == list(P.KINDS)
    # made for today's scenes; options added since then default to what it saw (one question form, 112 px view)
    added_since = {"names_cell": True, "full_view": 112}
    assert {**report["data"]["generator"], **added_since} == VisualSearchConfig().model_dump(mode="json")
    assert report["held_out"]["samples"] == 500 and report["held_out"]["read"] >= 0.9
    assert (SHIPPED / "model.safetensors").stat().st_size < 5_000_000  # a few MB, committed


def test_shipped_checkpoint_reads_held_out_zooms_but_not_the_full_view():
    """Fresh held-out samples (seeds the script never drew): zooms on a cell are read, the
    full view is not (the premise of the tool)."""
    model, processor = load_policy(str(SHIPPED))
    chat = ChatFormat(processor)
    budget = VisualSearchEnv(allow_tools=False).budget
    config = VisualSearchConfig()
    assert P.evaluate(model, chat, budget, config, n=48, seed=7)["read"] >= 0.8

    # the same question on the whole canvas, at the full view: the digit is ~8 px there
    samples = []
    for i in range(40):
        scene = P.generate(10**9 + 77 * i, config)
        samples.append(P.Sample("read", scene.image, "task", P.READ_PROMPT, str(scene.digit)))
    right = _read_all(model, chat, budget, samples)
    assert right <= 0.3  # chance is 0.1 (and the other two squares' digits are wrong answers)


def _read_all(model, chat, budget, samples) -> float:
    return float(np.mean(P.exact_matches(model, chat, budget, samples, max_new_tokens=4)))


@pytest.mark.slow
def test_pretraining_is_reproducible(tmp_path):
    """Same seed, same weights, bit for bit (one thread): the shipped checkpoint can be regenerated."""
    torch.set_num_threads(1)
    a = P.pretrain(tmp_path / "a", steps=6, eval_every=10**6, progress=False, final_eval=4)
    b = P.pretrain(tmp_path / "b", steps=6, eval_every=10**6, progress=False, final_eval=4)
    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["history"][-1]["loss"] == b["history"][-1]["loss"]


@pytest.mark.slow
def test_stage_two_from_a_stage_one_checkpoint_is_the_two_stage_command(tmp_path):
    """`--init STAGE1 --locate-steps N` gives the weights of running both stages in one command, bit for bit,
    which is how perception_find/ was made from perception/ (its report names both commands)."""
    torch.set_num_threads(1)
    kw = dict(eval_every=10**6, progress=False, final_eval=4)
    both = P.pretrain(tmp_path / "both", steps=3, locate_steps=2, **kw)
    P.pretrain(tmp_path / "s1", steps=3, locate_steps=0, **kw)
    resumed = P.pretrain(tmp_path / "s2", steps=3, locate_steps=2, init=tmp_path / "s1", **kw)
    wa, wb = load_file(str(tmp_path / "both" / "model.safetensors")), load_file(str(tmp_path / "s2" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r["stage"] for r in both["history"]] == ["read", "locate"] == [r["stage"] for r in resumed["history"]]
    assert both["held_out"].keys() == {"samples", "read", "none", "locate"}
    assert resumed["stage_1_from"]["command"].endswith("--steps 3 --locate-steps 0 --seed 0 --size S")


FIND_SHIPPED = Path(P.__file__).parent / "perception_find"


def test_find_checkpoint_records_both_stages():
    report = json.loads((FIND_SHIPPED / "pretrain_report.json").read_text())
    stage1 = json.loads((SHIPPED / "pretrain_report.json").read_text())
    assert report["locate_steps"] > 0 and f"--locate-steps {report['locate_steps']}" in report["command"]
    assert report["stage_1_from"]["command"] == stage1["command"] and report["steps"] == stage1["steps"]
    assert report["data"]["find_generator"] == VisualSearchConfig(**P.FIND_SCENES).model_dump(mode="json")
    assert report["data"]["locate_kinds"] == list(P.LOCATE_KINDS)
    assert report["held_out"]["samples"] == 500
    assert report["held_out"]["locate"] >= 0.9 and report["held_out"]["read"] >= 0.85
    assert (FIND_SHIPPED / "model.safetensors").stat().st_size < 5_000_000


def test_find_checkpoint_locates_fresh_canvases_reads_zooms_but_not_the_full_view():
    """Seeds the script never drew: the square's cell is found at the 224 px full view and a zoom on it is
    read, while the digit in the full view itself (15-17 px there) is not."""
    model, processor = load_policy(str(FIND_SHIPPED))
    chat = ChatFormat(processor)
    (stage,) = P.stages(0, 1)
    held_out = stage.evaluate(model, chat, n=32, seed=7)
    assert held_out["locate"] >= 0.8 and held_out["read"] >= 0.75 and held_out["none"] >= 0.9

    samples = []
    for i in range(40):
        scene = P.generate(10**9 + 77 * i, stage.config)
        samples.append(P.Sample("read", scene.image, "task", P.READ_PROMPT, str(scene.digit)))
    assert _read_all(model, chat, stage.budget, samples) <= 0.3  # chance is 0.1
