"""The rollout driver on the tiny model: token-exact trajectories with tool images (issue 3's proofs)."""

from __future__ import annotations

import pytest
import torch
from zoom_fixtures import TWO_ZOOMS, ForceScript, zoom_call

from agent_grpo.budget import VisualBudget
from agent_grpo.envs import BUDGET_NOTICE
from agent_grpo.rollout import (
    HFEngine,
    RolloutConfig,
    RolloutDriver,
    SamplingParams,
    ScriptedEngine,
    assemble_batch,
    forward_logprobs,
)
from agent_grpo.trajectory import Termination

ANSWER = "<think>easy</think><answer>3</answer>"


def by_sample(script_for_sample):
    """Script keyed on the trajectory id's sample index (ids are '<group>-<k>')."""
    return lambda key, turn: script_for_sample[int(key.rsplit("-", 1)[1])][turn]


def run(env, tiny, script, group_size=2, n_tasks=2, **cfg):
    model, _, chat = tiny
    engine = HFEngine(model, chat, logits_processors=ForceScript(chat, script))
    sampling = SamplingParams(max_new_tokens=cfg.pop("max_new_tokens", 64))
    config = RolloutConfig(group_size=group_size, max_total_tokens=cfg.pop("max_total_tokens", 1024), sampling=sampling)
    return RolloutDriver(env, engine, chat, config).rollout(env.load_tasks(n=n_tasks))


def test_sampling_logprobs_equal_training_forward_alone_and_in_a_padded_batch(tiny, zoom_env):
    model = tiny[0]
    # Sample 0 zooms twice (zoom of a zoom), sample 1 answers at once: rows of very different lengths.
    trajs = run(zoom_env, tiny, by_sample([TWO_ZOOMS, [ANSWER]]))
    multi = [t for t in trajs if t.sample_index == 0]
    assert all(len(t.images) == 3 and t.images[2].parent == 1 for t in multi)  # two tool crops each
    assert all(t.termination == Termination.ANSWERED for t in trajs)

    with torch.no_grad():
        together = assemble_batch(trajs, tiny[2], zoom_env.budget)
        lp, _ = forward_logprobs(model, together)
        diff = ((lp - together.old_logprobs) * together.loss_mask).abs().max().item()
        assert diff < 1e-4
        for t in multi:
            alone = assemble_batch([t], tiny[2], zoom_env.budget)
            lp1, _ = forward_logprobs(model, alone)
            assert ((lp1 - alone.old_logprobs) * alone.loss_mask).abs().max().item() < 1e-4
    # The recorded logprobs are real (the model is random, so they are far from 0).
    assert together.old_logprobs[together.loss_mask.bool()].mean() < -1.0


def test_loss_mask_covers_exactly_the_sampled_tokens(tiny, zoom_env):
    chat = tiny[2]
    [traj] = run(zoom_env, tiny, lambda key, turn: TWO_ZOOMS[turn], group_size=1, n_tasks=1)
    batch = assemble_batch([traj], chat, zoom_env.budget)
    mask = batch.loss_mask[0].bool()
    ids = batch.input_ids[0]
    sampled = [tok for s in traj.segments if s.kind == "sampled" for tok in s.token_ids]
    assert ids[mask].tolist() == sampled
    assert not mask[ids == chat.image_token_id].any()  # image pads never trained on
    # Injected and prompt tokens are all 0: the count of 1s is exactly the sampled count.
    assert int(mask.sum()) == len(sampled) == sum(len(s.token_ids) for s in traj.segments if s.kind == "sampled")
    # And the sampled tokens are the model's turns, verbatim (never re-tokenised).
    texts = [chat.decode(s.token_ids) for s in traj.segments if s.kind == "sampled"]
    assert texts == [t.text for t in traj.turns]


def test_max_turns_ends_the_trajectory(tiny, zoom_env):
    zoom_env.budget = VisualBudget(max_turns=2, max_images=10, max_pixels_per_image=112 * 112, max_visual_tokens=4096)
    [traj] = run(zoom_env, tiny, lambda key, turn: zoom_call([0, 0, 224, 224]), group_size=1, n_tasks=1)
    assert traj.termination == Termination.MAX_TURNS
    assert len(traj.turns) == 2
    assert "last turn" in traj.turns[0].notices[0]
    assemble_batch([traj], tiny[2], zoom_env.budget)  # tokens and images agree


def test_image_budget_tells_the_model_then_ends(tiny, zoom_env):
    zoom_env.budget = VisualBudget(max_turns=6, max_images=2, max_pixels_per_image=112 * 112, max_visual_tokens=4096)
    [traj] = run(zoom_env, tiny, lambda key, turn: zoom_call([0, 0, 224, 224]), group_size=1, n_tasks=1)
    assert traj.turns[0].notices == [BUDGET_NOTICE]
    assert traj.termination == Termination.BUDGET
    assert len(traj.images) == 2
    assemble_batch([traj], tiny[2], zoom_env.budget)


def test_visual_token_budget_refuses_an_image_that_does_not_fit(tiny, zoom_env):
    # 112 px views are 16 tokens each: the prompt image (16) and the first crop (32) fit in 40, a third does not.
    zoom_env.budget = VisualBudget(max_turns=5, max_images=10, max_pixels_per_image=112 * 112, max_visual_tokens=40)
    script = [zoom_call([0, 0, 224, 224])] * 2 + [ANSWER]
    [traj] = run(zoom_env, tiny, lambda key, turn: script[turn], group_size=1, n_tasks=1)
    assert len(traj.images) == 2
    assert traj.turns[0].results[0].ok and traj.turns[0].notices == []
    refused = traj.turns[1].results[0]
    assert refused.error_kind.value == "budget" and "visual token budget" in refused.error
    assert traj.turns[1].notices == [BUDGET_NOTICE]
    assert traj.termination == Termination.ANSWERED
    batch = assemble_batch([traj], tiny[2], zoom_env.budget)
    assert int((batch.input_ids == tiny[2].image_token_id).sum()) == 32


def test_per_turn_token_limit_truncates(tiny, zoom_env):
    [traj] = run(zoom_env, tiny, lambda key, turn: TWO_ZOOMS[turn], group_size=1, n_tasks=1, max_new_tokens=10)
    assert traj.termination == Termination.TRUNCATED
    assert traj.turns[0].truncated and not traj.turns[0].format_ok
    assert len(traj.segments[1].token_ids) == 10


def test_context_limit_never_leaves_an_image_with_its_tokens_cut(tiny, zoom_env):
    [full] = run(zoom_env, tiny, lambda key, turn: TWO_ZOOMS[turn], group_size=1, n_tasks=1)
    # A limit that lets the first crop in but not the second one's injection.
    first_injection_end = sum(len(s.token_ids) for s in full.segments[:4])
    limit = first_injection_end + 60
    [traj] = run(zoom_env, tiny, lambda key, turn: TWO_ZOOMS[turn], group_size=1, n_tasks=1, max_total_tokens=limit)
    assert traj.termination == Termination.TRUNCATED
    assert traj.metrics["context_overflow"] == 1.0
    assert len(traj.images) == 2  # the un-shown crop left the conversation, recorded in its turn
    assert traj.turns[1].results[0].images  # the tool did run
    assert sum(len(s.token_ids) for s in traj.segments) < limit
    batch = assemble_batch([traj], tiny[2], zoom_env.budget)  # would raise on a token/feature mismatch
    assert batch.input_ids.shape[1] < limit


def test_free_sampling_is_reproducible_for_a_seed(tiny, zoom_env):
    model, _, chat = tiny
    config = RolloutConfig(group_size=2, max_total_tokens=1024, sampling=SamplingParams(max_new_tokens=24))
    driver = RolloutDriver(zoom_env, HFEngine(model, chat), chat, config)
    tasks = zoom_env.load_tasks(n=1)
    first = [s.token_ids for t in driver.rollout(tasks, seed=7) for s in t.segments]
    again = [s.token_ids for t in driver.rollout(tasks, seed=7) for s in t.segments]
    other = [s.token_ids for t in driver.rollout(tasks, seed=8) for s in t.segments]
    assert first == again
    assert first != other


def test_scripted_engine_drives_the_same_pipeline(tiny, zoom_env):
    chat = tiny[2]
    engine = ScriptedEngine(lambda r: TWO_ZOOMS[r.turn] + "ignored after the stop", chat)
    config = RolloutConfig(group_size=3, sampling=SamplingParams(max_new_tokens=64))
    trajs = RolloutDriver(zoom_env, engine, chat, config).rollout(zoom_env.load_tasks(n=1))
    assert [t.termination for t in trajs] == [Termination.ANSWERED] * 3
    assert all(t.answer == "3" and t.num_tool_calls == 2 for t in trajs)
    assert all("ignored" not in t.turns[0].text for t in trajs)


def test_bad_model_output_is_data(tiny, zoom_env):
    junk = ['<think>x</think><tool_call>{"name": "zoom_in", "arguments": {"bbox_2d": [5, 5, 1]}}</tool_call>',
            '<think>x</think><tool_call>{not json</tool_call>',
            '<think>x</think><tool_call>{"name": "teleport", "arguments": {}}</tool_call>',
            ANSWER]
    [traj] = run(zoom_env, tiny, lambda key, turn: junk[turn], group_size=1, n_tasks=1)
    kinds = [r.error_kind.value for t in traj.turns for r in t.results]
    assert kinds == ["invalid_arguments", "parse", "unknown_tool"]
    assert traj.termination == Termination.ANSWERED  # the 4th and last allowed turn answers
    assert traj.metrics["failed_tool_calls"] == 3.0


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_logprobs_follow_the_temperature(tiny, zoom_env, temperature):
    model, _, chat = tiny
    engine = HFEngine(model, chat, logits_processors=ForceScript(chat, lambda key, turn: TWO_ZOOMS[turn]))
    config = RolloutConfig(group_size=1, sampling=SamplingParams(max_new_tokens=64, temperature=temperature))
    [traj] = RolloutDriver(zoom_env, engine, chat, config).rollout(zoom_env.load_tasks(n=1))
    batch = assemble_batch([traj], chat, zoom_env.budget)
    with torch.no_grad():
        lp, _ = forward_logprobs(model, batch, temperature=temperature)
    assert ((lp - batch.old_logprobs) * batch.loss_mask).abs().max().item() < 1e-4


def test_real_qwen_tokenizer_and_config_run_a_zoom_rollout(zoom_env):
    """The real Qwen2.5-VL-7B tokenizer, template and config (1 layer, random weights) run one zoom."""
    from pathlib import Path

    from agent_grpo.models.chat import ChatFormat
    from agent_grpo.models.loading import load_processor
    from agent_grpo.models.tiny import build_from_config

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "qwen2_5_vl_7b_instruct"
    chat = ChatFormat(load_processor(fixture))
    model = build_from_config(fixture, num_layers=1, hidden=64, vision_depth=1).eval()
    assert chat.stop_token_ids and "</answer>" not in chat.tokenizer.get_vocab()  # must stop by string
    # The answer turn runs on past `</answer>` (then `<|im_end|>`, forced): the stop string must cut it.
    script = [TWO_ZOOMS[0], TWO_ZOOMS[2] + " The answer is 3."]
    engine = HFEngine(model, chat, logits_processors=ForceScript(chat, lambda key, turn: script[turn]))
    config = RolloutConfig(group_size=1, max_total_tokens=2048, sampling=SamplingParams(max_new_tokens=64))
    [traj] = RolloutDriver(zoom_env, engine, chat, config).rollout(zoom_env.load_tasks(n=1))
    assert traj.termination == Termination.ANSWERED
    assert traj.turns[-1].text == TWO_ZOOMS[2]  # the multi-token stop string ended the turn
    assert chat.decode(traj.segments[-1].token_ids) == TWO_ZOOMS[2]  # and its tokens
    assert len(traj.images) == 2 and traj.images[1].source == "tool"
    batch = assemble_batch([traj], chat, zoom_env.budget)
    with torch.no_grad():
        lp, _ = forward_logprobs(model, batch)
    assert ((lp - batch.old_logprobs) * batch.loss_mask).abs().max().item() < 1e-4


def test_the_engine_never_samples_vision_placeholders(tiny, zoom_env):
    model, _, chat = tiny
    config = RolloutConfig(group_size=8, sampling=SamplingParams(max_new_tokens=48, temperature=2.0))
    trajs = RolloutDriver(zoom_env, HFEngine(model, chat), chat, config).rollout(zoom_env.load_tasks(n=2), seed=3)
    vocab = chat.tokenizer.get_vocab()
    banned = {vocab[t] for t in ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_start|>")}
    sampled = [tok for t in trajs for s in t.segments if s.kind == "sampled" for tok in s.token_ids]
    assert len(sampled) > 300 and not banned & set(sampled)
    assemble_batch(trajs, chat, zoom_env.budget)  # consistent


def test_cached_vision_inputs_equal_processing_every_image(tiny, zoom_env):
    """The batch's pixel values come from a per-image cache; they must equal a fresh processor call."""
    chat = tiny[2]
    trajs = RolloutDriver(zoom_env, ScriptedEngine(lambda r: TWO_ZOOMS[r.turn], chat), chat,
                          RolloutConfig(group_size=3)).rollout(zoom_env.load_tasks(n=2))
    batch = assemble_batch(trajs, chat, zoom_env.budget)
    views = [zoom_env.budget.view(img.pil, img.source) for t in trajs for img in t.images]
    fresh = chat.image_inputs(views)
    assert torch.equal(batch.pixel_values, fresh["pixel_values"])
    assert torch.equal(batch.image_grid_thw, fresh["image_grid_thw"])


def test_engine_image_cache_gives_the_processor_s_exact_pixels(tiny, zoom_env):
    from PIL import Image

    model, _, chat = tiny
    engine = HFEngine(model, chat)
    views = [Image.new("RGB", (112, 112), c) for c in ("red", "blue", "red")]
    first = engine._image_inputs(views)
    again = engine._image_inputs(list(reversed(views)))  # served from the cache
    fresh = chat.image_inputs(list(reversed(views)))
    assert torch.equal(again["pixel_values"], fresh["pixel_values"])
    assert torch.equal(again["image_grid_thw"], fresh["image_grid_thw"])
    assert torch.equal(first["pixel_values"], chat.image_inputs(views)["pixel_values"])
