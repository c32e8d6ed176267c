"""Qwen3-VL as a second model family, verified as Qwen2.5-VL is (issue 14, item 5).

A Qwen3-VL built from the real Qwen3-VL-8B-Instruct config (2 decoder layers of width 64, 2 vision blocks of
width 32; the real vocabulary of 151,936, special token ids, 16 px patches, interleaved mRoPE, learned vision
positions, DeepStack) with the real Qwen2/Qwen3 BPE tokenizer (tests/fixtures/qwen3_vl) and our Qwen3-VL
tools template: it loads through transformers, its mRoPE positions and rotary layout are transformers', the
rendering equals the template's, and sampling logprobs equal the training forward's for multi-turn rollouts
with tool images.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from model_fixtures import ZOOM, make_image
from transformers import AutoModelForImageTextToText, Qwen3VLForConditionalGeneration
from zoom_fixtures import TWO_ZOOMS, ForceScript, ZoomEnv

from agent_grpo.content import ImagePart, Message, TextPart
from agent_grpo.models.chat import (
    ChatFormat,
    Qwen3VLImageTextProcessor,
    template_is_prefix_preserving,
    template_supports_tools,
    to_template_messages,
    tools_chat_template,
)
from agent_grpo.models.family import QWEN2_5_VL, QWEN3_VL, family_named, family_of_model
from agent_grpo.models.loading import load_policy, load_processor, save_processor
from agent_grpo.models.mrope import mm_token_type_ids, multimodal_position_ids
from agent_grpo.models.tiny import build_from_config, build_tiny_model
from agent_grpo.rollout import HFEngine, RolloutConfig, RolloutDriver, SamplingParams, assemble_batch
from agent_grpo.rollout.logprobs import forward_head, forward_logprobs
from agent_grpo.rollout.packing import pack_batch
from agent_grpo.tools import load_tools
from agent_grpo.trajectory import Termination

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "qwen3_vl"
CALL = '<tool_call>\n{"name": "zoom_in", "arguments": {"bbox_2d": [0, 0, 160, 160]}}\n</tool_call>'


@pytest.fixture(scope="module")
def real():
    """(model, ChatFormat): the real-shaped Qwen3-VL (random weights) and the real tokenizer with our template."""
    model = build_from_config(FIXTURE, num_layers=2, hidden=64, vision_depth=2, vision_hidden=32)
    return model, ChatFormat(load_processor(FIXTURE))


def conversation() -> list[Message]:
    """system, user (text + image), assistant (think + call), tool (text + image), assistant (call),
    tool (image), assistant (think + answer), user (two images), assistant (answer)."""
    return [
        Message.text("system", "You look closely."),
        Message(role="user", content=[TextPart(text="Which digit?"), ImagePart.from_pil(make_image(320, 256))]),
        Message.text("assistant", f"<think>\nToo small.\n</think>\n\n{CALL}"),
        Message(
            role="tool",
            content=[TextPart(text="Zoomed into [0, 0, 160, 160]."),
                     ImagePart.from_pil(make_image(256, 256, "blue"), observation=1, source="tool", parent=0)],
        ),
        Message.text("assistant", CALL),
        Message(role="tool", content=[ImagePart.from_pil(make_image(288, 320, "green"), observation=2, source="tool")]),
        Message.text("assistant", "<think>\nA 7.\n</think>\n\n<answer>7</answer>"),
        Message(role="user", content=[ImagePart.from_pil(make_image(256, 384)), TextPart(text="and"),
                                      ImagePart.from_pil(make_image(384, 256, "blue"))]),
        Message.text("assistant", "<answer>2</answer>"),
    ]


# ---- the fixture's ids are the config's ------------------------------------------------------------


def test_the_qwen2_bpe_tokenizer_has_the_ids_the_qwen3_vl_config_names(real):
    config = json.loads((FIXTURE / "config.json").read_text())
    tok = real[1].tokenizer
    ids = tok.convert_tokens_to_ids
    assert config["image_token_id"] == ids("<|image_pad|>") == 151655
    assert config["video_token_id"] == ids("<|video_pad|>") == 151656
    assert config["vision_start_token_id"] == ids("<|vision_start|>") == 151652
    assert config["vision_end_token_id"] == ids("<|vision_end|>") == 151653
    assert config["text_config"]["eos_token_id"] == ids("<|im_end|>") == 151645
    assert config["text_config"]["bos_token_id"] == ids("<|endoftext|>") == 151643
    # Qwen3's added tokens, single tokens and not special (decoding keeps them)
    assert [ids(t) for t in ("<tool_response>", "</tool_response>", "<think>", "</think>")] == list(range(151665, 151669))
    assert tok.decode([151667, 151668], skip_special_tokens=True) == "<think></think>"
    assert len(tok) == 151669 < config["text_config"]["vocab_size"] == 151936


# ---- loading through transformers ------------------------------------------------------------------


@pytest.mark.slow
def test_real_shaped_qwen3_vl_saves_and_loads_through_the_normal_transformers_path(real, tmp_path):
    model, chat = real
    cfg = model.config
    assert type(model) is Qwen3VLForConditionalGeneration and family_of_model(model) is QWEN3_VL
    assert cfg.text_config.vocab_size == 151936 and cfg.image_token_id == 151655
    assert cfg.vision_config.patch_size == 16 and cfg.vision_config.num_position_embeddings == 2304
    assert cfg.vision_config.deepstack_visual_indexes == [0, 1]
    assert cfg.text_config.rope_parameters["mrope_section"] == QWEN3_VL.mrope_section(16) == [4, 2, 2]
    assert cfg.text_config.rope_parameters["rope_theta"] == 5000000
    model.save_pretrained(tmp_path)
    save_processor(chat.processor, tmp_path)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["processor_class"] == "Qwen3VLProcessor"
    image = make_image(320, 256)
    msgs = [Message(role="user", content=[TextPart(text="What?"), ImagePart.from_pil(image)])]
    ids, images = chat.encode_messages(msgs, add_generation_prompt=True)
    input_ids = torch.tensor([ids])
    inputs = {"input_ids": input_ids, "mm_token_type_ids": mm_token_type_ids(input_ids, 151655),
              **chat.image_inputs(images)}
    # 320 x 256 px at 32 px per visual token: 10 x 8 tokens (Qwen2.5-VL's 28 px would give 11 x 9)
    assert input_ids.eq(151655).sum() == chat.num_image_tokens(320, 256) == 80
    with torch.no_grad():
        expected = model(**inputs).logits
        for loaded in (load_policy(tmp_path)[0], AutoModelForImageTextToText.from_pretrained(tmp_path),
                       load_policy(tmp_path, family="qwen3_vl")[0]):
            assert type(loaded) is Qwen3VLForConditionalGeneration
            assert torch.equal(loaded(**inputs).logits, expected)
    processor = load_processor(tmp_path)
    assert isinstance(processor, Qwen3VLImageTextProcessor) and processor.chat_template == tools_chat_template("qwen3_vl")
    with pytest.raises(ValueError, match="model.family is 'qwen2_5_vl' but .* is a 'qwen3_vl' checkpoint"):
        load_policy(tmp_path, family="qwen2_5_vl")


def test_image_processor_settings_are_qwen3_vl_s(real):
    ip = real[1].image_processor
    assert (ip.patch_size, ip.merge_size, real[1].token_side) == (16, 2, 32)
    assert tuple(ip.image_mean) == tuple(ip.image_std) == (0.5, 0.5, 0.5)
    assert ip.size["shortest_edge"] == 65536  # the real minimum: 256 x 256 px, 64 visual tokens
    out = real[1].image_inputs([make_image(320, 256)])
    assert out["image_grid_thw"].tolist() == [[1, 16, 20]]  # 16 px patches
    assert out["pixel_values"].shape == (320, 3 * 2 * 16 * 16)


def test_family_names_are_checked_with_the_supported_list(tmp_path):
    assert family_named("qwen3_vl") is QWEN3_VL and family_named("qwen2_5_vl") is QWEN2_5_VL
    with pytest.raises(ValueError, match="'qwen4_vl' is not supported.*qwen2_5_vl, qwen2_vl, qwen3_vl"):
        family_named("qwen4_vl")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    with pytest.raises(ValueError, match="build_from_config handles qwen2_5_vl and qwen3_vl"):
        build_from_config(tmp_path)


def test_model_family_in_the_training_config_is_validated(tmp_path):
    from agent_grpo.errors import ConfigError
    from agent_grpo.train.config import load_config
    from agent_grpo.train.policy import build_policy

    with pytest.raises(ConfigError, match="model.family: model family 'qwen3' is not supported; supported families"):
        load_config(None, ["model.family=qwen3"])
    with pytest.raises(ConfigError, match="the tiny model is built as qwen2_5_vl or qwen3_vl"):
        load_config(None, ["model.family=qwen2_vl"])
    with pytest.raises(ConfigError, match="model.family is 'qwen2_5_vl' but .*qwen3_vl.* is a 'qwen3_vl' checkpoint"):
        load_config(None, [f"model.path={FIXTURE}", "model.family=qwen2_5_vl"])
    cfg = load_config(None, ["model.family=qwen3_vl"])
    model, processor = build_policy(cfg.model)
    assert type(model) is Qwen3VLForConditionalGeneration and isinstance(processor, Qwen3VLImageTextProcessor)
    assert type(build_policy(load_config(None, []).model)[0]).__name__ == "Qwen2_5_VLForConditionalGeneration"


# ---- rendering: our Qwen3-VL template with tools ---------------------------------------------------


def test_render_equals_the_template_applied_by_transformers_and_its_layout(real):
    chat = real[1]
    msgs = conversation()
    ours = chat.render_text(msgs, [ZOOM], add_generation_prompt=False)
    # The same template applied by transformers' own processor path (the tokenizer's apply_chat_template).
    reference = chat.processor.apply_chat_template(to_template_messages(msgs), tools=[ZOOM], tokenize=False)
    assert ours == reference
    assert ours.startswith(
        "<|im_start|>system\nYou look closely.\n\n# Tools\n\nYou may call one or more functions to assist with "
        "the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        + json.dumps(ZOOM, ensure_ascii=False) + "\n</tools>\n\n"
    )
    assert (
        "<|im_start|>user\nWhich digit?<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
        f"<|im_start|>assistant\n<think>\nToo small.\n</think>\n\n{CALL}<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nZoomed into [0, 0, 160, 160].<|vision_start|><|image_pad|><|vision_end|>"
        "\n</tool_response><|im_end|>\n"
    ) in ours
    assert ours.count("<|image_pad|>") == 5 and ours.count("<think>") == 2  # earlier thoughts are kept
    # Qwen3-VL has no default system message (Qwen2.5-VL's template adds "You are a helpful assistant.").
    plain = chat.render_text(msgs[1:2], add_generation_prompt=True)
    assert plain == ("<|im_start|>user\nWhich digit?<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
                     "<|im_start|>assistant\n")
    assert chat.render_text(msgs[1:2], [ZOOM]).startswith("<|im_start|>system\n# Tools\n\nYou may call")
    # OpenAI-style tool calls and reasoning_content render as Qwen3 writes them.
    dicts = [{"role": "user", "content": "q"},
             {"role": "assistant", "content": "", "reasoning_content": "hm",
              "tool_calls": [{"type": "function", "function": {"name": "zoom_in", "arguments": {"bbox_2d": [1, 2, 3, 4]}}}]}]
    assert chat.render_text(dicts, [ZOOM]).endswith(
        '<|im_start|>assistant\n<think>\nhm\n</think>\n\n<tool_call>\n{"name": "zoom_in", "arguments": '
        '{"bbox_2d": [1, 2, 3, 4]}}\n</tool_call><|im_end|>\n'
    )
    template = tools_chat_template("qwen3_vl")
    assert template != tools_chat_template("qwen2_5_vl")
    assert template_supports_tools(template) and template_is_prefix_preserving(template)


def test_incremental_render_and_encode_equal_the_full_render_and_the_transformers_processor(real):
    chat = real[1]
    msgs = conversation()
    images = [p.pil for m in msgs for p in m.images]
    ids: list[int] = []
    seen, shown = "", 0
    for k, m in enumerate(msgs):  # as the rollout driver: render, cut after what was seen, encode
        if m.role != "assistant":
            continue
        rendered = chat.render(msgs[:k], [ZOOM], add_generation_prompt=True)
        assert rendered.text.startswith(seen)
        n = sum(len(x.images) for x in msgs[:k])
        ids += chat.encode(rendered.after(len(seen)), images[shown:n])
        shown = n
        ids += chat.tokenizer.encode(m.text_content, add_special_tokens=False)
        seen = rendered.text + m.text_content
    ids += chat.encode(chat.render(msgs, [ZOOM]).after(len(seen)), [])
    full_text = chat.render_text(msgs, [ZOOM])
    full = chat.encode(full_text, images)
    assert ids == full
    reference = chat.processor(text=[full_text], images=images, return_tensors="pt")  # Qwen3VLProcessor
    assert reference["input_ids"][0].tolist() == full
    ours = chat.image_inputs(images)
    assert torch.equal(ours["pixel_values"], reference["pixel_values"])
    assert torch.equal(ours["image_grid_thw"], reference["image_grid_thw"])
    assert full.count(151655) == sum(chat.num_image_tokens(*im.size) for im in images)


# ---- mRoPE ------------------------------------------------------------------------------------------


def _qwen3_positions(ids: list[int], grids: list[list[int]], image_token_id: int = 151655) -> torch.Tensor:
    """Qwen3-VL's image positions written out by hand: text counts on; an image of (1, H, W) patches
    (h = H/2, w = W/2 tokens) at position p gets t = p, rows p..p+h-1, columns p..p+w-1; text resumes at
    p + max(h, w)."""
    out, pos, i, grid = [], 0, 0, iter(grids)
    while i < len(ids):
        if ids[i] != image_token_id:
            out.append((pos, pos, pos))
            pos, i = pos + 1, i + 1
            continue
        _, gh, gw = next(grid)
        h, w = gh // 2, gw // 2
        out += [(pos, pos + r, pos + c) for r in range(h) for c in range(w)]
        i += h * w
        pos += max(h, w)
    return torch.tensor(out).T  # [3, T]


def test_mrope_positions_equal_transformers_for_a_padded_multi_image_multi_turn_batch(real):
    model, chat = real
    msgs = conversation()
    rows = [chat.encode_messages(msgs[:k], [ZOOM], add_generation_prompt=True) for k in (2, 8, 9)]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.tensor([[chat.pad_token_id] * (width - len(ids)) + ids for ids, _ in rows])  # left-padded
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in rows])
    images = [im for _, ims in rows for im in ims]
    grid = chat.image_inputs(images)["image_grid_thw"]
    ours = multimodal_position_ids(model, input_ids, mask, grid)  # [3, B, T]
    seen: list[torch.Tensor] = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["position_ids"]), with_kwargs=True)
    try:
        offset = 0
        for b, (ids, ims) in enumerate(rows):
            row = torch.tensor([ids])
            g = grid[offset: offset + len(ims)]
            offset += len(ims)
            hand = _qwen3_positions(ids, g.tolist())
            real_cols = mask[b].bool()
            assert torch.equal(ours[:, b, real_cols], hand)
            assert ours[:, b, ~real_cols].eq(0).all()
            # transformers' own forward, one unpadded row, no positions given: computes the same
            with torch.no_grad():
                model(input_ids=row, mm_token_type_ids=mm_token_type_ids(row, 151655), **chat.image_inputs(ims))
            inner = seen.pop()  # [3, 1, T]: (t, h, w)
            assert inner.shape == (3, 1, len(ids)) and torch.equal(inner[:, 0], hand)
    finally:
        hook.remove()
    assert int(ours[0, 2].max()) + 1 < int(mask[2].sum())  # images take fewer positions than tokens


def test_rotary_layout_is_interleaved_with_the_scaled_sections(real):
    model = real[0]
    rotary = model.model.language_model.rotary_emb
    head_dim = model.config.text_config.head_dim
    t, h, w = QWEN3_VL.mrope_section(head_dim)
    positions = torch.tensor([[[3]], [[50]], [[700]]])  # t, h, w of one token
    cos, _ = rotary(torch.zeros(1, dtype=torch.float32), positions)
    inv = rotary.inv_freq
    half = head_dim // 2
    axis = [1 if i % 3 == 1 and i < 3 * h else 2 if i % 3 == 2 and i < 3 * w else 0 for i in range(half)]
    expected = torch.tensor([float(positions[a, 0, 0]) for a in axis]) * inv
    torch.testing.assert_close(cos[0, 0, :half], expected.cos(), rtol=0, atol=1e-6)
    assert axis.count(0) == t and axis.count(1) == h and axis.count(2) == w
    assert QWEN3_VL.mrope_section(128) == [24, 20, 20]  # the real Qwen3-VL-8B split
    assert QWEN2_5_VL.mrope_section(128) == [16, 24, 24]  # and Qwen2.5-VL-7B's


# ---- sampling vs training logprobs -------------------------------------------------------------------


@pytest.mark.slow
def test_sampling_logprobs_equal_training_forward_multi_turn_with_tool_images(real):
    model, chat = real
    env = ZoomEnv(tools=load_tools().subset(["zoom_in"]))
    try:
        # Sample 0 zooms twice (two tool images, the second a zoom of the first), sample 1 answers at once.
        script = [TWO_ZOOMS, ["<think>easy</think><answer>3</answer>"]]
        engine = HFEngine(model, chat, logits_processors=ForceScript(
            chat, lambda key, turn: script[int(key.rsplit("-", 1)[1])][turn]))
        config = RolloutConfig(group_size=2, max_total_tokens=4096, sampling=SamplingParams(max_new_tokens=64))
        trajs = RolloutDriver(env, engine, chat, config).rollout(env.load_tasks(n=1))
        assert [t.termination for t in trajs] == [Termination.ANSWERED] * 2
        assert len(trajs[0].images) == 3 and trajs[0].images[2].parent == 1
        batch = assemble_batch(trajs, chat, env.budget)
        assert int(batch.image_grid_thw.shape[0]) == 4
        # The budget counted the tokens the model was shown: 112 px views are enlarged to Qwen3-VL's minimum,
        # 256 x 256 px = 64 tokens, and counted so.
        for b, traj in enumerate(trajs):
            counted = sum(env.budget.tokens_for(i.width, i.height, i.source) for i in traj.images)
            assert counted == int((batch.input_ids[b] == 151655).sum()) == 64 * len(traj.images)
        with torch.no_grad():
            lp, _ = forward_logprobs(model, batch)
            packed = forward_head(model, pack_batch(batch)).logprobs
        mask = batch.loss_mask.bool()
        gap = (lp - batch.old_logprobs)[mask].abs().max().item()
        assert gap < 1e-4, gap
        assert (packed - batch.old_logprobs)[mask].abs().max().item() < 1e-4
        assert batch.old_logprobs[mask].mean() < -1.0  # real logprobs of a random model
    finally:
        env.shutdown()


def test_tiny_qwen3_vl_sampling_logprobs_equal_training_and_reload(tmp_path):
    model, processor = build_tiny_model(tmp_path / "ckpt", family="qwen3_vl")
    assert type(model) is Qwen3VLForConditionalGeneration and processor.image_processor.patch_size == 16
    assert model.config.vision_config.deepstack_visual_indexes == [0, 1]
    chat = ChatFormat(processor)
    env = ZoomEnv(tools=load_tools().subset(["zoom_in"]))
    try:
        engine = HFEngine(model, chat, logits_processors=ForceScript(chat, lambda key, turn: TWO_ZOOMS[turn]))
        config = RolloutConfig(group_size=1, sampling=SamplingParams(max_new_tokens=64, temperature=0.7))
        [traj] = RolloutDriver(env, engine, chat, config).rollout(env.load_tasks(n=1))
        assert traj.termination == Termination.ANSWERED and len(traj.images) == 3
        batch = assemble_batch([traj], chat, env.budget)
        with torch.no_grad():
            lp, _ = forward_logprobs(model, batch, temperature=0.7)
            reloaded = load_policy(tmp_path / "ckpt")[0]
            lp2, _ = forward_logprobs(reloaded, batch, temperature=0.7)
        assert ((lp - batch.old_logprobs) * batch.loss_mask).abs().max().item() < 1e-4
        assert torch.equal(lp, lp2)
    finally:
        env.shutdown()


def test_the_visual_budget_counts_qwen3_vl_tokens_and_its_views_pass_the_processor_unchanged(real):
    from agent_grpo.budget import VisualBudget
    from agent_grpo.rollout.vision import VisionCache

    chat = real[1]
    budget = VisualBudget(max_pixels_per_image=1024 * 1024)
    assert budget.for_model(28, 3136) is budget  # Qwen2.5-VL's geometry and minimum: the budget as it was
    ours = budget.for_model(chat.token_side, chat.min_pixels)
    assert (ours.token_side, ours.min_pixels_per_image) == (32, 65536)
    cache = VisionCache(chat, budget)
    for width, height in [(100, 60), (640, 480), (300, 1000), (1000, 1000)]:
        part = ImagePart.from_pil(make_image(width, height))
        view = cache.view(part)
        assert view.width % 32 == 0 and view.height % 32 == 0
        tokens = int(chat.image_inputs([view])["image_grid_thw"].prod()) // 4
        assert ours.tokens_for(width, height) == cache.num_tokens(part) == tokens  # counted = shown
    # Counted at 28 px per token a COCO-sized image was 17 x 23 = 391 tokens; Qwen3-VL spends 15 x 20 = 300 on it.
    assert (budget.tokens_for(640, 480), ours.tokens_for(640, 480)) == (391, 300)
    # A budget whose views are smaller than the processor's minimum: they are enlarged to it, and counted so.
    small = VisualBudget(max_pixels_per_image=112 * 112).for_model(chat.token_side, chat.min_pixels)
    assert (small.min_pixels_per_image, small.max_pixels_per_image) == (65536, 65536)
    assert small.tokens_for(448, 448) == 64 == chat.num_image_tokens(112, 112)


def test_model_tiny_command_writes_a_qwen3_vl_checkpoint(tmp_path):
    import typer
    from typer.testing import CliRunner

    from agent_grpo.cli.model import model_app

    app = typer.Typer()
    app.add_typer(model_app, name="model")
    out = tmp_path / "tiny3"
    result = CliRunner().invoke(app, ["model", "tiny", str(out), "--family", "qwen3_vl"])
    assert result.exit_code == 0, result.output
    assert "wrote a tiny Qwen3-VL" in result.output and "Qwen3-VL:" in result.output
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen3_vl"
    assert (out / "chat_template.jinja").read_text() == tools_chat_template("qwen3_vl")
    bad = CliRunner().invoke(app, ["model", "tiny", str(tmp_path / "x"), "--family", "qwen2_vl"], env={"COLUMNS": "200"})
    assert bad.exit_code == 2 and "unknown family" in bad.output
