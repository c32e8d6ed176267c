"""Chat rendering and token encoding for Qwen-VL models (Qwen2-VL, Qwen2.5-VL, Qwen3-VL).

`ChatFormat` wraps a processor (tokenizer + image processor + chat template) and gives a rollout
driver what token-in/token-out needs:

- `render(messages, tools, add_generation_prompt)`: the chat as a `RenderedChat`, text with one
  `<|image_pad|>` per image (unexpanded) that knows which characters are message text;
  `render_text` is its plain text;
- `render_continuation(done, new, tools)`: the text that follows `done` in a render of `done + new`,
  starting right after the last assistant message's *content* (so it begins with `assistant_end`):
  exactly what a driver injects after sampled tokens (checked to be a true continuation);
- `encode(rendered, images)`: token ids with each `<|image_pad|>` expanded to the image's token count;
  message text is encoded as plain text, so control tokens come only from the template (below);
- `image_inputs(images)`: `pixel_values` and `image_grid_thw` for the model;
- `assistant_end`, `stop_strings`, `stop_token_ids`.

The templates shipped here (`tools_chat_template(family)`: `chat_template.jinja` for Qwen2/2.5-VL,
`chat_template_qwen3_vl.jinja` for Qwen3-VL) add what the stock Qwen2.5-VL template lacks: a tools section,
assistant `tool_calls`, and `tool` messages (rendered in a user turn as `<tool_response>` blocks, images
included). Both are prefix-preserving: rendering the chat up to an assistant message and then appending
later messages never changes earlier text.

Control tokens come only from the template. In the text of system, user and tool messages (a task's
question, a tool's output, an error quoting a label or a tool name the model chose) special tokens are
never parsed: a label `"<|image_pad|>"` is the characters `<`, `|`, `image`... and never an image
placeholder, a name `"<|im_start|>"` never a turn boundary (non-special added tokens such as `<tool_call>`
mark nothing and are matched as usual). Assistant content is the model's own text: its tokens are parsed
(a full render then re-encodes what was sampled). For text that spells no special token this changes no
token id: the tokenizer too splits on added tokens first and encodes the text between them on its own.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

from PIL import Image
from transformers import PreTrainedTokenizerBase, Qwen2_5_VLProcessor, Qwen3VLProcessor
from transformers.utils.chat_template_utils import render_jinja_template

from agent_grpo.content import ImagePart, Message, TextPart
from agent_grpo.models.family import family_named

TEMPLATE_PATH = Path(__file__).with_name("chat_template.jinja")

IMAGE_TOKEN = "<|image_pad|>"
# Where generation must stop: after a tool call (the driver runs it), after an answer, at end of turn.
STOP_STRINGS: tuple[str, ...] = ("</tool_call>", "</answer>", "<|im_end|>", "<|endoftext|>")

_PROBE = "\u2063agent-grpo-probe\u2063"  # text no real message contains
_PROBE_TOOL = {
    "type": "function",
    "function": {"name": "agent_grpo_probe_tool", "description": "probe", "parameters": {"type": "object"}},
}

ChatMessage = Message | dict[str, Any]


@dataclass(frozen=True)
class RenderedChat:
    """A rendered chat: its text, and the spans of it that are message text (encoded literally)."""

    text: str
    literal: tuple[tuple[int, int], ...] = ()  # sorted, non-overlapping [start, end) character spans

    def after(self, start: int) -> RenderedChat:
        """The text from character `start` on, spans shifted and cut to match."""
        spans = tuple((max(a, start) - start, b - start) for a, b in self.literal if b > start)
        return RenderedChat(self.text[start:], spans)

    def pieces(self) -> list[tuple[str, bool]]:
        """(text, is_literal) pieces in order."""
        out, pos = [], 0
        for a, b in self.literal:
            if a > pos:
                out.append((self.text[pos:a], False))
            out.append((self.text[a:b], True))
            pos = b
        if pos < len(self.text):
            out.append((self.text[pos:], False))
        return out


@cache
def tools_chat_template(family: str = "qwen2_5_vl") -> str:
    """Our chat template with tools for a model family (Qwen2/2.5-VL: the text of `chat_template.jinja`)."""
    return family_named(family).chat_template()


class _ImageOnly:
    """Mixed in before a Qwen-VL processor class: build it without a video processor.

    Without torchvision transformers has no video processor, and `Qwen2_5_VLProcessor(...)` fails
    checking the missing one. transformers reads a processor's parts from its `__init__` signature, so this
    one names only the image processor and the tokenizer.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
            **kwargs,
        )


class Qwen2_5_VLImageTextProcessor(_ImageOnly, Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` without a video processor.

    Checkpoints are saved with `processor_class: Qwen2_5_VLProcessor` (see `loading.save_processor`),
    so other tools (vLLM) load them as ordinary Qwen2.5-VL checkpoints.
    """


class Qwen3VLImageTextProcessor(_ImageOnly, Qwen3VLProcessor):
    """`Qwen3VLProcessor` without a video processor (see `Qwen2_5_VLImageTextProcessor`)."""


def build_processor(
    tokenizer, image_processor, chat_template: str | None = None, family: str = "qwen2_5_vl"
) -> Qwen2_5_VLImageTextProcessor | Qwen3VLImageTextProcessor:
    """A processor from a tokenizer and a (PIL) image processor; `chat_template` defaults to the family's (ours).

    Qwen3-VL gets the image-only `Qwen3VLProcessor`; Qwen2-VL and Qwen2.5-VL the Qwen2.5-VL one (the same
    text and image handling)."""
    template = chat_template or tools_chat_template(family)
    tokenizer.chat_template = template
    cls = Qwen3VLImageTextProcessor if family_named(family).name == "qwen3_vl" else Qwen2_5_VLImageTextProcessor
    return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)


def to_template_messages(messages: Iterable[ChatMessage], mark=None) -> list[dict[str, Any]]:
    """Our `Message` objects as the dicts chat templates consume; dicts pass through unchanged.

    Text parts become `{"type": "text", "text": ...}`, image parts `{"type": "image"}` (the
    template only needs to know where an image is; pixels go through `encode`/`image_inputs`).
    `mark(text)`, if given, replaces the text of non-assistant messages (see `ChatFormat.render`).
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, dict):
            out.append(message)
            continue
        literal = mark is not None and message.role != "assistant"
        content: list[dict[str, Any]] = []
        for part in message.content:
            if isinstance(part, TextPart):
                content.append({"type": "text", "text": mark(part.text) if literal else part.text})
            else:
                content.append({"type": "image"})
        out.append({"role": message.role, "content": content})
    return out


def message_images(messages: Iterable[ChatMessage]) -> list[Image.Image]:
    """The pixels of every image in `messages`, in the order the template renders them."""
    images: list[Image.Image] = []
    for message in messages:
        parts = message.content if isinstance(message, Message) else message.get("content")
        if isinstance(parts, str) or parts is None:
            continue
        for part in parts:
            if isinstance(part, ImagePart):
                images.append(part.pil)
            elif isinstance(part, dict) and (part.get("type") == "image" or "image" in part):
                image = part.get("image")
                if not isinstance(image, Image.Image):
                    raise ValueError(
                        f"image part {part!r} has no PIL image under 'image'; pass pixels to encode()"
                    )
                images.append(image)
    return images


def count_image_parts(messages: Iterable[ChatMessage]) -> int:
    n = 0
    for message in to_template_messages(messages):
        parts = message.get("content")
        if isinstance(parts, list):
            n += sum(1 for p in parts if p.get("type") == "image" or "image" in p or "image_url" in p)
    return n


def _tool_schemas(tools: Sequence[Any] | None) -> list[dict[str, Any]] | None:
    """Tool schemas as dicts: accepts dicts and objects with `json_schema()` (our `Tool`)."""
    if not tools:
        return None
    return [t if isinstance(t, dict) else t.json_schema() for t in tools]


class ChatFormat:
    """Renders chats with a processor's template and encodes them to token ids with images expanded."""

    def __init__(self, processor: Qwen2_5_VLProcessor, chat_template: str | None = None):
        self.processor = processor
        self.tokenizer: PreTrainedTokenizerBase = processor.tokenizer
        self.image_processor = processor.image_processor
        template = chat_template or processor.chat_template or self.tokenizer.chat_template
        if not template:
            raise ValueError("the processor has no chat template; pass chat_template=tools_chat_template()")
        self.chat_template: str = template
        self.image_token_id = self._single_token_id(IMAGE_TOKEN)
        self._marker_key = secrets.token_hex(8)
        self._marker = re.compile(f"\x00{self._marker_key}:(\\d+)\x00")
        self.merge_size: int = self.image_processor.merge_size
        # Pixels per side of one visual token: 28 for Qwen2/2.5-VL (14 px patches), 32 for Qwen3-VL (16 px).
        self.token_side: int = self.image_processor.patch_size * self.merge_size
        # The processor's own minimum image size (pixels): smaller views are enlarged by it.
        self.min_pixels: int = int(self.image_processor.size["shortest_edge"])
        # Batches pad with this id (masked out everywhere); Qwen2.5-VL's tokenizer names <|endoftext|>.
        pad = self.tokenizer.pad_token_id
        self.pad_token_id: int = pad if pad is not None else self._single_token_id("<|endoftext|>")
        self.assistant_end = self._probe_assistant_end()
        self.stop_strings: tuple[str, ...] = STOP_STRINGS
        ids = [self._single_token_id(s, required=False) for s in STOP_STRINGS]
        # Only strings that are one token can stop by id; with the real Qwen2.5-VL vocabulary `</answer>`
        # is several tokens and must stop by string.
        self.stop_token_ids: tuple[int, ...] = tuple(i for i in ids if i is not None)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ChatFormat:
        from agent_grpo.models.loading import load_processor

        return cls(load_processor(path))

    # ----------------------------------------------------------------------------------- rendering

    def render_text(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[Any] | None = None,
        add_generation_prompt: bool = False,
    ) -> str:
        """The chat as text: one `<|image_pad|>` per image part, not yet expanded."""
        return self.render(messages, tools, add_generation_prompt).text

    def render(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[Any] | None = None,
        add_generation_prompt: bool = False,
    ) -> RenderedChat:
        """The chat rendered, with the spans of system, user and tool message text marked literal.

        Each such text is rendered as a marker holding a per-instance random key, and put back after
        rendering: message text cannot forge a marker, and the template's own text is never marked.
        """
        texts: list[str] = []

        def mark(text: str) -> str:
            texts.append(text)
            return f"\x00{self._marker_key}:{len(texts) - 1}\x00"

        rendered, _ = render_jinja_template(
            conversations=[to_template_messages(messages, mark)],
            tools=_tool_schemas(tools),
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
        )
        marked = rendered[0]
        out: list[str] = []
        spans: list[tuple[int, int]] = []
        length = pos = 0
        for m in self._marker.finditer(marked):
            out.append(marked[pos : m.start()])
            length += m.start() - pos
            text = texts[int(m.group(1))]
            if text:
                spans.append((length, length + len(text)))
            out.append(text)
            length += len(text)
            pos = m.end()
        out.append(marked[pos:])  # a template may drop or repeat a text: each marker it wrote is put back
        return RenderedChat("".join(out), tuple(spans))

    def render_continuation(
        self,
        done: Sequence[ChatMessage],
        new: Sequence[ChatMessage],
        tools: Sequence[Any] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """The text that follows `done` when `done + new` is rendered.

        When `done` ends with an assistant message the text starts right after that message's
        content, i.e. with `assistant_end`: the tokens to inject after sampled ones. Raises
        `ValueError` if the template rewrites earlier text (not prefix-preserving).
        """
        full = self.render_text([*done, *new], tools, add_generation_prompt)
        if not done:
            return full
        prefix = self.render_text(done, tools, add_generation_prompt=False)
        if not full.startswith(prefix):
            raise ValueError(
                "the chat template is not prefix-preserving: rendering more messages changed earlier text; "
                "use agent_grpo.models.chat.tools_chat_template()"
            )
        cut = len(prefix)
        if _role(done[-1]) == "assistant":
            if not prefix.endswith(self.assistant_end):
                raise ValueError(f"the rendered assistant message does not end with {self.assistant_end!r}")
            cut -= len(self.assistant_end)
        return full[cut:]

    @property
    def generation_prompt(self) -> str:
        """The text `add_generation_prompt=True` appends (e.g. `<|im_start|>assistant\\n`)."""
        messages = [{"role": "user", "content": "x"}]
        with_prompt = self.render_text(messages, add_generation_prompt=True)
        return with_prompt[len(self.render_text(messages)) :]

    def has_tools_section(self) -> bool:
        return template_supports_tools(self.chat_template)

    # ------------------------------------------------------------------------------------ encoding

    def num_image_tokens(self, width: int, height: int) -> int:
        """How many `<|image_pad|>` tokens an image of this size becomes."""
        patches = self.image_processor.get_number_of_image_patches(height, width, {})
        return patches // self.merge_size**2

    def encode(self, text: str | RenderedChat, images: Sequence[Image.Image] = ()) -> list[int]:
        """Token ids of `text` with the i-th `<|image_pad|>` expanded to image i's token count.

        A `RenderedChat`'s literal spans never become control tokens (see the module docstring); a
        plain string is trusted whole, as template output.
        """
        if isinstance(text, RenderedChat):
            ids = self._encode_rendered(text)
        else:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
        n_pads = sum(1 for i in ids if i == self.image_token_id)
        if n_pads != len(images):
            raise ValueError(
                f"the text has {n_pads} {IMAGE_TOKEN} placeholders but {len(images)} images were given; "
                "pass exactly one image per placeholder, in order (render_text writes one per image part)"
            )
        if not images:
            return ids
        out: list[int] = []
        remaining = iter(images)
        for i in ids:
            if i == self.image_token_id:
                image = next(remaining)
                out.extend([i] * self.num_image_tokens(image.width, image.height))
            else:
                out.append(i)
        return out

    def encode_messages(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[Any] | None = None,
        add_generation_prompt: bool = False,
    ) -> tuple[list[int], list[Image.Image]]:
        """Render and encode a chat whose image parts carry pixels; returns (ids, images in order)."""
        images = message_images(messages)
        return self.encode(self.render(messages, tools, add_generation_prompt), images), images

    def _encode_rendered(self, rendered: RenderedChat) -> list[int]:
        """Split on the added tokens of the template's text only; encode the text between them plainly."""
        ids: list[int] = []
        plain: list[str] = []

        def flush() -> None:
            if plain:
                ids.extend(self._encode_plain("".join(plain)))
                plain.clear()

        for text, literal in rendered.pieces():
            if literal:
                plain.append(text)
                continue
            pos = 0
            for m in self._added_pattern.finditer(text):
                plain.append(text[pos : m.start()])
                flush()
                ids.append(self._added_vocab[m.group(0)])
                pos = m.end()
            plain.append(text[pos:])
        flush()
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        """Token ids of text between control tokens: special tokens spelled in it stay characters.

        Non-special added tokens (Qwen's `<tool_call>`, the tiny tokenizer's `<think>`) are still matched,
        as everywhere: they mark no turn, no image and no end of text.
        """
        return self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)

    @cached_property
    def _added_vocab(self) -> dict[str, int]:
        return dict(self.tokenizer.get_added_vocab())

    @cached_property
    def _added_pattern(self) -> re.Pattern[str]:
        # Longest first, as the tokenizer matches them; `<|im_start|>` and friends, `<tool_call>` too.
        tokens = sorted(self._added_vocab, key=len, reverse=True)
        return re.compile("|".join(re.escape(t) for t in tokens)) if tokens else re.compile(r"(?!)")

    def image_inputs(self, images: Sequence[Image.Image]) -> dict[str, Any]:
        """`pixel_values` [sum of patches, C*T*P*P] and `image_grid_thw` [n_images, 3] tensors."""
        if not images:
            raise ValueError("image_inputs needs at least one image")
        out = self.image_processor(images=list(images), return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    # ------------------------------------------------------------------------------------- helpers

    def _single_token_id(self, token: str, required: bool = True) -> int | None:
        ids = self.tokenizer.encode(token, add_special_tokens=False)
        if len(ids) == 1:
            return ids[0]
        if required:
            raise ValueError(f"{token!r} is not a single token in this tokenizer (got {len(ids)} tokens)")
        return None

    def _probe_assistant_end(self) -> str:
        messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": _PROBE}]
        text = self.render_text(messages)
        if _PROBE not in text:
            raise ValueError("the chat template does not render assistant content verbatim")
        return text[text.index(_PROBE) + len(_PROBE) :]


def template_supports_tools(template: str) -> bool:
    """Whether a template renders tool schemas and assistant tool calls (the stock Qwen2.5-VL one does not)."""
    messages = [
        {"role": "user", "content": "x"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "agent_grpo_probe_call", "arguments": {}}}
            ],
        },
    ]
    rendered, _ = render_jinja_template(conversations=[messages], tools=[_PROBE_TOOL], chat_template=template)
    return "agent_grpo_probe_tool" in rendered[0] and "agent_grpo_probe_call" in rendered[0]


_PROBE_CHAT: list[dict[str, Any]] = [
    {"role": "system", "content": "s"},
    {"role": "user", "content": [{"type": "text", "text": "q"}, {"type": "image"}]},
    {
        "role": "assistant",
        "content": '<think>a</think>\n<tool_call>\n{"name": "t", "arguments": {}}\n</tool_call>',
    },
    {"role": "tool", "content": [{"type": "text", "text": "r"}, {"type": "image"}]},
    {"role": "tool", "content": [{"type": "image"}]},
    {"role": "assistant", "content": "<think>b</think>\n<answer>1</answer>"},
    {"role": "user", "content": "again"},
    {"role": "assistant", "content": "<answer>2</answer>"},
]


def template_is_prefix_preserving(template: str) -> bool:
    """Whether rendering a multi-turn tool chat turn by turn gives the same text as rendering it whole.

    Checked on a probe chat (system, user with image, assistant tool call, two tool results with
    images, assistant answer, another user turn): each assistant message's content follows its
    generation prompt verbatim, every later prompt starts with the text up to that message, and no
    image placeholder is lost.
    """

    def render(messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        rendered, _ = render_jinja_template(
            conversations=[messages],
            tools=[_PROBE_TOOL],
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
        )
        return rendered[0]

    chat = _PROBE_CHAT
    try:
        if render(chat, False).count(IMAGE_TOKEN) != count_image_parts(chat):
            return False
        for k, message in enumerate(chat):
            if message["role"] != "assistant":
                continue
            done = render(chat[: k + 1], False)
            if not done.startswith(render(chat[:k], True) + message["content"]):
                return False
            later = [j for j in range(k + 1, len(chat)) if chat[j]["role"] == "assistant"]
            if not all(render(chat[:j], True).startswith(done) for j in later):
                return False
    except Exception:  # a template that raises on this chat cannot serve our rollouts either
        return False
    return True


def _role(message: ChatMessage) -> str:
    return message.role if isinstance(message, Message) else message["role"]
