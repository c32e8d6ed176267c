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
    assert report["command"].startswith("agent-grpo model pretrain") and "--seed 0" in report["command"]
    assert report["steps"] == 3000 and report["data"]["kinds"] == list(P.KINDS)
    assert report["data"]["generator"] == VisualSearchConfig().model_dump(mode="json")  # made for today's scenes
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
    from agent_grpo.rollout.engine import GenRequest, SamplingParams
    from agent_grpo.rollout.hf_engine import HFEngine

    trajs = [P.encode_sample(s, chat, budget, i) for i, s in enumerate(samples)]
    reqs = [GenRequest(token_ids=t.segments[0].token_ids, images=[budget.view(t.images[0].pil, t.images[0].source)])
            for t in trajs]
    outs = HFEngine(model.eval(), chat).generate(reqs, SamplingParams(max_new_tokens=4, greedy=True))
    texts = [chat.decode(o.token_ids).replace("<|im_end|>", "").strip() for o in outs]
    return float(np.mean([t == s.target for t, s in zip(texts, samples, strict=True)]))


@pytest.mark.slow
def test_pretraining_is_reproducible(tmp_path):
    """Same seed, same weights, bit for bit (one thread): the shipped checkpoint can be regenerated."""
    torch.set_num_threads(1)
    a = P.pretrain(tmp_path / "a", steps=6, eval_every=10**6, progress=False, final_eval=4)
    b = P.pretrain(tmp_path / "b", steps=6, eval_every=10**6, progress=False, final_eval=4)
    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["history"][-1]["loss"] == b["history"][-1]["loss"]
