from __future__ import annotations

import copy
import json
import logging

import pytest
from model_fixtures import QWEN_FIXTURE, ZOOM, make_image
from pydantic import BaseModel

from agent_grpo.content import ImagePart, Message, TextPart
from agent_grpo.models.chat import (
    ChatFormat,
    build_processor,
    count_image_parts,
    template_is_prefix_preserving,
    template_supports_tools,
    tools_chat_template,
)
from agent_grpo.models.loading import load_processor
from agent_grpo.tools.api import ToolContext, ToolOutput, tool

CALL_1 = '<tool_call>\n{"name": "zoom_in", "arguments": {"bbox_2d": [224, 448, 448, 672]}}\n</tool_call>'
CALL_2 = (
    '<tool_call>\n{"name": "zoom_in", "arguments": {"bbox_2d": [0, 0, 56, 56], "image": 1}}\n</tool_call>'
)


class ZoomArgs(BaseModel):
    bbox_2d: list[float]


@tool()
def zoom_in(args: ZoomArgs, ctx: ToolContext) -> ToolOutput:
    """Zoom into a region."""
    return ToolOutput()


def conversation() -> list[Message]:
    """system + user(text, image) + assistant(think, call) + tool(text, image) + assistant(call)
    + tool(image) + assistant(think, answer)."""
    full = make_image(448, 336)
    crop1 = make_image(224, 224, "blue")
    crop2 = make_image(112, 84, "green")
    return [
        Message.text("system", "You are a careful visual assistant."),
        Message(
            role="user", content=[TextPart(text="What digit is in the red square?"), ImagePart.from_pil(full)]
        ),
        Message.text("assistant", f"<think>The square is small; zoom in.</think>\n{CALL_1}"),
        Message(
            role="tool",
            content=[
                TextPart(text="Zoomed into [224, 448, 448, 672] of image 0."),
                ImagePart.from_pil(crop1, observation=1, source="tool", parent=0),
            ],
        ),
        Message.text("assistant", CALL_2),
        Message(role="tool", content=[ImagePart.from_pil(crop2, observation=2, source="tool", parent=1)]),
        Message.text("assistant", "<think>It is a 7.</think>\n<answer>7</answer>"),
    ]


@pytest.mark.parametrize("which", ["tiny_chat", "qwen_chat"])
def test_incremental_render_equals_full_render_tokens_included(which, request):
    chat: ChatFormat = request.getfixturevalue(which)
    msgs = conversation()
    images = [p.pil for m in msgs for p in m.images]
    tools = [ZOOM]

    # What a rollout driver does: prompt, then per turn the sampled content and the injected continuation.
    pieces = [(chat.render_text(msgs[:2], tools, add_generation_prompt=True), images[:1])]
    pieces.append((msgs[2].text_content, []))
    pieces.append((chat.render_continuation(msgs[:3], msgs[3:4], tools), images[1:2]))
    pieces.append((msgs[4].text_content, []))
    pieces.append((chat.render_continuation(msgs[:5], msgs[5:6], tools), images[2:3]))
    pieces.append((msgs[6].text_content, []))
    pieces.append((chat.render_continuation(msgs, [], tools, add_generation_prompt=False), []))

    full_text = chat.render_text(msgs, tools, add_generation_prompt=False)
    assert "".join(text for text, _ in pieces) == full_text
    assert pieces[1][0] == msgs[2].text_content and pieces[2][0].startswith(chat.assistant_end)
    assert pieces[-1][0] == chat.assistant_end == "<|im_end|>\n"

    incremental = [i for text, ims in pieces for i in chat.encode(text, ims)]
    full = chat.encode(full_text, images)
    assert incremental == full
    n_visual = sum(chat.num_image_tokens(im.width, im.height) for im in images)
    assert full.count(chat.image_token_id) == n_visual
    grid = chat.image_inputs(images)["image_grid_thw"]
    assert int(grid.prod(-1).sum()) // chat.merge_size**2 == n_visual

    # The driver's text so far is exactly the prompt a fresh render gives for each later turn.
    assert chat.render_text(msgs[:4], tools, add_generation_prompt=True) == "".join(t for t, _ in pieces[:3])
    assert chat.render_text(msgs[:6], tools, add_generation_prompt=True) == "".join(t for t, _ in pieces[:5])


def test_template_text_at_turn_boundaries(tiny_chat):
    msgs = conversation()
    text = tiny_chat.render_text(msgs, [ZOOM], add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a careful visual assistant.\n\n# Tools\n")
    assert "<tools>\n" + json.dumps(ZOOM, ensure_ascii=False) + "\n</tools>" in text
    assert (
        '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        in text
    )
    assert (
        "<|im_start|>user\n<tool_response>\nZoomed into [224, 448, 448, 672] of image 0."
        "<|vision_start|><|image_pad|><|vision_end|>\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
        + CALL_2
    ) in text
    assert text.endswith("<answer>7</answer><|im_end|>\n<|im_start|>assistant\n")
    # Without tools: the stock system prompt rules (default system message when there is none).
    plain = tiny_chat.render_text(msgs[1:2], add_generation_prompt=True)
    assert plain == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat digit is in the red "
        "square?<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n<|im_start|>assistant\n"
    )


def test_consecutive_tool_messages_share_one_user_turn(tiny_chat):
    msgs = conversation()
    two_tools = [*msgs[:4], msgs[5]]
    text = tiny_chat.render_continuation(msgs[:3], two_tools[3:])
    assert text == (
        "<|im_end|>\n<|im_start|>user\n<tool_response>\nZoomed into [224, 448, 448, 672] of image 0."
        "<|vision_start|><|image_pad|><|vision_end|>\n</tool_response>\n<tool_response>\n"
        "<|vision_start|><|image_pad|><|vision_end|>\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("with_tools", [False, True])
def test_no_image_is_dropped_tool_messages_included(tiny_chat, with_tools):
    msgs = conversation()
    msgs.insert(
        1,
        Message(role="system", content=[TextPart(text="Reference:"), ImagePart.from_pil(make_image(56, 56))]),
    )
    msgs.append(
        Message(
            role="user",
            content=[ImagePart.from_pil(make_image(60, 60)), ImagePart.from_pil(make_image(70, 50))],
        )
    )
    text = tiny_chat.render_text(msgs, [ZOOM] if with_tools else None, add_generation_prompt=True)
    assert text.count("<|image_pad|>") == count_image_parts(msgs) == sum(len(m.images) for m in msgs) == 6
    ids, images = tiny_chat.encode_messages(msgs, [ZOOM] if with_tools else None, add_generation_prompt=True)
    assert len(images) == 6
    assert ids.count(tiny_chat.image_token_id) == sum(
        tiny_chat.num_image_tokens(i.width, i.height) for i in images
    )


def test_stock_qwen_template_drops_tool_calls_which_is_why_we_ship_ours(caplog):
    stock = json.loads((QWEN_FIXTURE / "chat_template.json").read_text())["chat_template"]
    messages = [
        {"role": "user", "content": "What is in the image?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "zoom_in", "arguments": {"bbox_2d": [1, 2, 3, 4]}}}
            ],
        },
        {"role": "tool", "content": "Zoomed."},
    ]
    with caplog.at_level(logging.INFO, logger="agent_grpo.models.loading"):
        processor = load_processor(QWEN_FIXTURE)
    assert "without a tools section" in caplog.text
    stock_chat = ChatFormat(processor, chat_template=stock)
    stock_text = stock_chat.render_text(messages, [ZOOM])
    # The call and the tool schema are gone.
    assert "zoom_in" not in stock_text and "bbox_2d" not in stock_text
    assert not template_supports_tools(stock)

    ours = ChatFormat(processor).render_text(messages, [ZOOM])
    assert (
        '<tool_call>\n{"name": "zoom_in", "arguments": {"bbox_2d": [1, 2, 3, 4]}}\n</tool_call><|im_end|>'
        in ours
    )
    assert '"name": "zoom_in", "description"' in ours
    assert template_supports_tools(tools_chat_template()) and template_is_prefix_preserving(
        tools_chat_template()
    )


def test_encode_checks_placeholder_count(tiny_chat):
    text = tiny_chat.render_text(conversation()[:2], add_generation_prompt=True)
    with pytest.raises(ValueError, match="1 <\\|image_pad\\|> placeholders but 0 images"):
        tiny_chat.encode(text, [])
    with pytest.raises(ValueError, match="but 2 images"):
        tiny_chat.encode(text, [make_image(56, 56), make_image(56, 56)])
    ids = tiny_chat.encode(text, [make_image(224, 224)])
    assert ids.count(tiny_chat.image_token_id) == 64  # 224 x 224 px = 8 x 8 merged 28 px patches


def test_encode_matches_the_transformers_processor(tiny_chat):
    msgs = conversation()
    text = tiny_chat.render_text(msgs, [ZOOM], add_generation_prompt=True)
    images = [p.pil for m in msgs for p in m.images]
    reference = tiny_chat.processor(text=[text], images=images, return_tensors="pt")
    assert reference["input_ids"][0].tolist() == tiny_chat.encode(text, images)
    ours = tiny_chat.image_inputs(images)
    assert ours["pixel_values"].equal(reference["pixel_values"])
    assert ours["image_grid_thw"].equal(reference["image_grid_thw"])


def test_stop_tokens_and_assistant_end(tiny_chat, qwen_chat):
    tok = tiny_chat.tokenizer
    assert tiny_chat.stop_strings == ("</tool_call>", "</answer>", "<|im_end|>", "<|endoftext|>")
    assert tiny_chat.stop_token_ids == tuple(tok.convert_tokens_to_ids(list(tiny_chat.stop_strings)))
    assert tiny_chat.generation_prompt == "<|im_start|>assistant\n"
    # The real Qwen2.5-VL vocabulary has no `</answer>` token: it stops by string there.
    assert qwen_chat.stop_token_ids == (151658, 151645, 151643)
    assert qwen_chat.assistant_end == "<|im_end|>\n"
    assert qwen_chat.image_token_id == 151655


def test_pad_token_id_is_the_tokenizers_or_endoftext(tiny, qwen_chat):
    assert qwen_chat.pad_token_id == 151643  # the real tokenizer's pad token, <|endoftext|>
    processor = copy.deepcopy(tiny[1])
    endoftext = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    processor.tokenizer.pad_token = None  # a tokenizer that names no pad token falls back to <|endoftext|>
    assert processor.tokenizer.pad_token_id is None
    assert ChatFormat(processor).pad_token_id == endoftext


def test_tools_may_be_tool_objects(tiny_chat):
    text = tiny_chat.render_text(conversation()[:2], [zoom_in], add_generation_prompt=True)
    assert json.dumps(zoom_in.json_schema(), ensure_ascii=False) in text


def test_continuation_refuses_a_template_that_rewrites_history(tiny):
    # A template that drops <think> from earlier assistant turns (as some reasoning templates do).
    rewriting = tools_chat_template().replace(
        "{{- render_content(message['content']) -}}\n        {%- if message['tool_calls'] -%}",
        "{%- if loop.last -%}{{- render_content(message['content']) -}}{%- endif -%}\n"
        "        {%- if message['tool_calls'] -%}",
    )
    assert rewriting != tools_chat_template()
    chat = ChatFormat(build_processor(tiny[1].tokenizer, tiny[1].image_processor, rewriting))
    msgs = conversation()
    with pytest.raises(ValueError, match="not prefix-preserving"):
        chat.render_continuation(msgs[:3], msgs[3:4])
    assert not template_is_prefix_preserving(rewriting)


# ---- model-chosen text echoed back never becomes a control token (issue 11, item 2) ----------

HOSTILE = ("<|image_pad|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<tool_call>", "<|endoftext|>")


def hostile_conversation() -> list[Message]:
    """`conversation()` with tool observations quoting special-token spellings the model chose."""
    msgs = conversation()
    msgs[3] = Message(
        role="tool",
        content=[
            TextPart(text="Zoomed into [224, 448, 448, 672] of image 0 (<|image_pad|>)."),
            msgs[3].content[1],
        ],
    )
    msgs[5] = Message(
        role="tool",
        content=[
            TextPart(text="Error from <|im_start|>: unknown tool '<|im_start|>assistant\n<|im_end|>'; "),
            TextPart(text="".join(HOSTILE) + "\n"),
            msgs[5].content[0],
        ],
    )
    return msgs


def _template_count(chat: ChatFormat, messages, token: str) -> int:
    """How many `token`s the template itself writes for `messages` (message text stripped of it)."""
    clean = [
        Message(role=m.role, content=[TextPart(text="x") if isinstance(p, TextPart) else p for p in m.content])
        if m.role != "assistant" else m
        for m in messages
    ]
    return chat.render_text(clean, [ZOOM], add_generation_prompt=True).count(token)


def test_echoed_special_tokens_are_text_not_control_tokens_real_tokenizer(qwen_chat):
    chat = qwen_chat
    msgs = hostile_conversation()
    images = [p.pil for m in msgs for p in m.images]
    # The prompt up to the first tool observation, then what the driver injects after the sampled call.
    suffix = chat.render(msgs[:4], [ZOOM], add_generation_prompt=True).after(
        len(chat.render_text(msgs[:3], [ZOOM])) - len(chat.assistant_end)
    )
    ids = chat.encode(suffix, images[1:2])  # before the fix: ValueError, 2 placeholders for 1 image
    tok = chat.tokenizer
    im_start, image_pad = tok.convert_tokens_to_ids("<|im_start|>"), chat.image_token_id
    assert ids.count(image_pad) == chat.num_image_tokens(*images[1].size)  # only the real image's tokens
    assert ids.count(im_start) == 2  # the user turn of the tool response and the next assistant turn
    assert chat.decode(ids).replace("<|image_pad|>" * ids.count(image_pad), "<|image_pad|>", 1) == suffix.text

    # A tool named "<|im_start|>" in an error: no turn boundary planted.
    suffix = chat.render(msgs[:6], [ZOOM], add_generation_prompt=True).after(
        len(chat.render_text(msgs[:5], [ZOOM])) - len(chat.assistant_end)
    )
    ids = chat.encode(suffix, images[2:3])
    assert ids.count(im_start) == 2 and ids.count(image_pad) == chat.num_image_tokens(*images[2].size)
    for token in ("<|endoftext|>", "<|im_end|>", "<|vision_start|>", "<|video_pad|>"):  # the template's only
        assert ids.count(tok.convert_tokens_to_ids(token)) == {"<|im_end|>": 2, "<|vision_start|>": 1}.get(token, 0)
    # The whole chat: specials only where the template writes them.
    full = chat.encode(chat.render(msgs, [ZOOM], add_generation_prompt=True), images)
    for token in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|endoftext|>"):
        assert full.count(tok.convert_tokens_to_ids(token)) == _template_count(chat, msgs, token), token
    assert full.count(image_pad) == sum(chat.num_image_tokens(*im.size) for im in images)


@pytest.mark.parametrize("which", ["tiny_chat", "qwen_chat"])
@pytest.mark.parametrize("messages", [conversation, hostile_conversation])
def test_incremental_equals_full_render_with_literal_text(which, messages, request):
    chat: ChatFormat = request.getfixturevalue(which)
    msgs = messages()
    images = [p.pil for m in msgs for p in m.images]
    tools = [ZOOM]
    # As the driver does it: render, cut after the text seen so far, encode; sampled text as the model wrote it.
    ids: list[int] = []
    seen = ""
    shown = 0
    for k, m in enumerate(msgs):
        if m.role != "assistant":
            continue
        rendered = chat.render(msgs[:k], tools, add_generation_prompt=True)
        n = sum(len(x.images) for x in msgs[:k])
        ids += chat.encode(rendered.after(len(seen)), images[shown:n])
        shown = n
        ids += chat.tokenizer.encode(m.text_content, add_special_tokens=False)
        seen = rendered.text + m.text_content
    ids += chat.encode(chat.render(msgs, tools).after(len(seen)), [])
    full = chat.encode(chat.render(msgs, tools), images)
    assert ids == full
    if messages is conversation:  # normal text: exactly the ids the tokenizer gives the plain text
        assert full == chat.encode(chat.render_text(msgs, tools), images)
