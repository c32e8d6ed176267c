"""The SFT loss: the hand-computed value, and gradient only from the demonstration's assistant tokens."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from sft_fixtures import demos, tiny_chat, visual_search_env

from agent_grpo.rollout.batch import assemble_batch
from agent_grpo.rollout.logprobs import forward_logprobs
from agent_grpo.train.sft_loss import sft_loss, sft_update

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setting():
    model, _, chat = tiny_chat()
    env = visual_search_env()
    yield model, chat, env, demos(env, chat, n=3)
    env.shutdown()


def test_loss_is_the_mean_nll_of_masked_tokens():
    # two rows; column 0 never counts (nothing predicts it)
    logprobs = torch.tensor([[0.0, math.log(0.5), math.log(0.25), -7.0],
                             [0.0, -9.0, math.log(0.125), 0.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0],
                         [0.0, 0.0, 1.0, 0.0]])
    # -(ln 0.5 + ln 0.25 + ln 0.125) / 3 = (1 + 2 + 3) ln 2 / 3 = 2 ln 2; masked -7 and -9 do not count
    assert sft_loss(logprobs, mask).item() == pytest.approx(2 * math.log(2), abs=1e-6)
    # with the step's token count (6 trained tokens over all micro-batches) the sum is divided by 6
    assert sft_loss(logprobs, mask, num_tokens=6.0).item() == pytest.approx(math.log(2), abs=1e-6)


def test_mask_covers_exactly_the_assistant_turns(setting):
    _, chat, env, trajs = setting
    batch = assemble_batch(trajs, chat, env.budget)
    for b, traj in enumerate(trajs):
        trained = batch.input_ids[b][batch.loss_mask[b].bool()].tolist()
        assert chat.decode(trained) == "".join(turn.text for turn in traj.turns)
    trained_ids = set(batch.input_ids[batch.loss_mask.bool()].tolist())
    never = ["<|image_pad|>", "<|vision_start|>", "<tool_response>", "</tool_response>", "<|im_start|>", "<|im_end|>"]
    assert not trained_ids & set(chat.tokenizer.convert_tokens_to_ids(never))


def test_gradient_flows_only_from_assistant_tokens(setting):
    """d loss / d head input is zero at every position that predicts a prompt, tool-result or image token.

    The final hidden state at position t-1 (the logprob head's input; it feeds nothing else) predicts
    token t; only positions whose target is a sampled (assistant) token may receive gradient. Tool
    results still shape the gradient as *context* of later assistant tokens (that is how the model
    learns to read a zoom), never as targets.
    """
    model, chat, env, trajs = setting
    model = copy.deepcopy(model).train()
    batch = assemble_batch(trajs, chat, env.budget)
    kept = []

    def keep_logits(module, args, out) -> None:
        out.retain_grad()
        kept.append(out)

    handle = model.model.language_model.norm.register_forward_hook(keep_logits)
    logprobs, _ = forward_logprobs(model, batch)
    handle.remove()
    sft_loss(logprobs, batch.loss_mask).backward()
    per_position = kept[0].grad.abs().sum(-1)  # [B, T]: gradient reaching the logits at each position
    targets_trained = batch.loss_mask[:, 1:].bool()  # [B, T-1]: position t-1 predicts token t
    assert (per_position[:, :-1][~targets_trained] == 0).all()
    assert (per_position[:, :-1][targets_trained] > 0).all()
    assert per_position[:, -1].eq(0).all()  # the last position predicts nothing
    image_targets = batch.input_ids[:, 1:] == chat.image_token_id
    assert image_targets.any() and (per_position[:, :-1][image_targets] == 0).all()


def test_micro_batches_do_not_change_the_step(setting):
    model, chat, env, trajs = setting

    def step(micro_batch_tokens):
        m = copy.deepcopy(model)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        out = sft_update(m, opt, None, trajs, chat, env.budget, micro_batch_tokens=micro_batch_tokens, max_grad_norm=1e9)
        return m, out

    whole, a = step(100_000)
    split, b = step(1024)  # about one trajectory per micro-batch
    assert a["micro_batches"] == 1 and b["micro_batches"] == len(trajs)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert a["token_accuracy"] == b["token_accuracy"]
    assert a["trained_tokens"] == sum(len(s.token_ids) for t in trajs for s in t.segments if s.kind == "sampled")
    for p, q in zip(whole.parameters(), split.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_the_logged_lr_is_the_rate_the_step_trained_at(setting):
    """With a warm-up the rate changes every step; the metric was the next step's (0.2, 0.3 for 0.1, 0.2)."""
    model, chat, env, trajs = setting
    m = copy.deepcopy(model)
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.1 * (k + 1))
    stepped = []
    opt.register_step_pre_hook(lambda o, args, kwargs: stepped.append(o.param_groups[0]["lr"]))
    logged = [sft_update(m, opt, scheduler, trajs[:1], chat, env.budget, micro_batch_tokens=100_000,
                         max_grad_norm=1.0)["lr"] for _ in range(2)]
    assert stepped == pytest.approx([0.1, 0.2])
    assert logged == pytest.approx(stepped)
