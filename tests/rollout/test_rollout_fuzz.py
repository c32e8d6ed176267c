"""Whatever a model writes, `RolloutDriver.rollout` never raises and every trajectory passes the batch checks.

End to end with the real Qwen2.5-VL tokenizer and image processor, the installed tool registry plus
misbehaving tools registered here (hung, GIL-holding, dying), huge and 200:1 task images listed in the
prompt in the opposite order to the task's, and a random "model": random text, valid and malformed
tool calls, thin / huge / degenerate boxes, special-token spellings (echoed back by tools), unknown
tools, random JSON, image indices out of range.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from hostile_tools import dies, echo, hang, hog_gil, sliver_image
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from agent_grpo.budget import VisualBudget
from agent_grpo.content import ImagePart, Message, TextPart
from agent_grpo.envs import Environment
from agent_grpo.models.chat import ChatFormat, RenderedChat
from agent_grpo.models.loading import load_processor
from agent_grpo.rewards import accuracy, format_reward
from agent_grpo.rewards.rubric import Rubric
from agent_grpo.rollout import RolloutConfig, RolloutDriver, SamplingParams, assemble_batch
from agent_grpo.rollout.engine import GenRequest, GenResult
from agent_grpo.tools import load_tools
from agent_grpo.trajectory import Task

QWEN = Path(__file__).resolve().parents[1] / "fixtures" / "qwen2_5_vl_7b_instruct"
HOSTILE_TOOLS = (hang, hog_gil, dies, echo, sliver_image)
SPECIALS = ("<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|endoftext|>",
            "<tool_call>", "</tool_call>", "<|video_pad|>")
# Tokens a real model may sample (HFEngine suppresses the vision placeholders and <|im_start|>).
SAMPLEABLE = ("<|im_end|>", "<|endoftext|>", "<tool_call>", "</tool_call>", "<|box_start|>", "<|object_ref_start|>")


def _pixels(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, size=(height, width, 3), dtype=np.uint8))


@lru_cache(maxsize=1)
def _TASKS() -> list[Task]:  # noqa: N802 - built once: immutable rows
    huge, small = _pixels(3000, 2000, 1), _pixels(64, 48, 2)
    thin, mid = _pixels(5600, 28, 3), _pixels(300, 200, 4)  # 200:1, the most Qwen-VL takes
    return [
        Task(id="huge", question="Which digit?", answer="3", images=[ImagePart.from_pil(huge), ImagePart.from_pil(small)]),
        Task(id="thin", question="Which <|im_start|> digit?", answer="7",
             images=[ImagePart.from_pil(thin), ImagePart.from_pil(mid)]),
    ]


class FuzzEnv(Environment):
    """Two tasks with images of very different sizes; the prompt lists them in reverse order."""

    name = "rollout-fuzz"
    tool_names = ("crop", "enhance", "flip", "grid", "rotate", "zoom_in", *(t.name for t in HOSTILE_TOOLS))

    def load_tasks(self, split="train", n=None, seed=0):
        return _TASKS()[: n or 2]

    def prompt(self, task, images):
        content: list = []
        for img in reversed(images):  # placeholder order differs from `episode.images` order
            content += [TextPart(text=f"Image {img.observation}: "), img, TextPart(text="\n")]
        content.append(TextPart(text=task.question))
        return [Message.text("system", self.system_prompt), Message(role="user", content=content)]

    def default_budget(self):
        return VisualBudget(max_turns=4, max_images=6, max_pixels_per_image=112 * 112, max_visual_tokens=512)

    def default_rubric(self):
        return Rubric([format_reward.with_weight(0.2), accuracy("exact", weight=0.8)])


@dataclass(frozen=True)
class Real:
    """A token the model samples as itself (not spelled out in characters)."""

    token: str


class FuzzModel:
    """An engine whose turns are drawn by hypothesis; spelled text never contains control tokens, as with
    a real model whose vision and turn-start tokens are suppressed (`HFEngine.suppress`)."""

    def __init__(self, chat: ChatFormat, turns: list[list[list]]):
        self.chat, self.turns, self.keys = chat, turns, {}
        self.stops = set(chat.stop_token_ids)

    def _ids(self, fragments: list) -> list[int]:
        ids: list[int] = []
        for f in fragments:
            if isinstance(f, Real):
                ids.append(self.chat.tokenizer.convert_tokens_to_ids(f.token))
            elif f:
                ids += self.chat.encode(RenderedChat(f, ((0, len(f)),)))
        return ids

    def generate(self, requests: list[GenRequest], params: SamplingParams) -> list[GenResult]:
        out = []
        for r in requests:
            k = self.keys.setdefault(r.key, len(self.keys))
            script = self.turns[k % len(self.turns)]
            ids = self._ids(script[r.turn % len(script)])
            limit = min(params.max_new_tokens, r.max_new_tokens or params.max_new_tokens)
            stop = next((j for j, t in enumerate(ids[:limit]) if t in self.stops), None)
            if stop is not None:
                ids = ids[: stop + 1]
            reason = "stop" if stop is not None or len(ids) < limit else "length"
            ids = ids[:limit] or [self.chat.tokenizer.convert_tokens_to_ids("<|im_end|>")]
            out.append(GenResult(token_ids=ids, logprobs=[-1.0] * len(ids), finish_reason=reason))
        return out


_coord = st.one_of(st.integers(-50, 6000), st.floats(allow_nan=True, allow_infinity=True), st.just(1e308))
_boxes = st.one_of(
    st.lists(_coord, min_size=4, max_size=4),
    st.sampled_from([[0, 500, 1000, 501], [0, 0, 3000, 2000], [0, 0, 5600, 28], [10, 10, 10, 10], [5, 5, 1, 1]]),
    st.lists(_coord, max_size=6), st.text(max_size=5), st.none(),
)
_labels = st.one_of(st.sampled_from(SPECIALS), st.text(max_size=12), st.builds("".join, st.lists(st.sampled_from(SPECIALS), max_size=3)))
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=6),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=6)
_FAST = ["zoom_in", "image_zoom_in_tool", "crop", "rotate", "flip", "enhance", "grid", "echo", "sliver_image",
         "<|im_start|>", "<|image_pad|>", "nope", ""]
# Slow misbehaviour (each costs a time-out and a fresh worker) is drawn rarely: 3 in 40.
_names = st.integers(0, 39).map(lambda i: ["hang", "hog_gil", "dies"][i] if i < 3 else _FAST[i % len(_FAST)])
_arguments = st.fixed_dictionaries(
    {}, optional={"bbox_2d": _boxes, "label": _labels, "image": st.integers(-2, 8), "angle": st.integers(-400, 400),
                  "direction": st.sampled_from(["horizontal", "vertical", "<|im_end|>"]), "text": _labels,
                  "rows": st.integers(-1, 5)},
)
_call = st.one_of(
    st.builds(lambda n, a: json.dumps({"name": n, "arguments": a}), _names, _arguments),
    _json.map(json.dumps), st.text(max_size=20),
)
_fragment = st.one_of(
    st.text(max_size=16),
    st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "<tool_call>", "</tool_call>", *SPECIALS]),
    st.sampled_from([Real(t) for t in SAMPLEABLE]),
    st.builds(lambda c: f"<think>x</think><tool_call>{c}</tool_call>", _call),
    st.builds(lambda c: [Real("<tool_call>"), c, Real("</tool_call>")], _call),
    st.builds(lambda a: f"<answer>{a}</answer>", _labels),
)


def _flatten(fragments: list) -> list:
    return [x for f in fragments for x in (f if isinstance(f, list) else [f])]


_turn = st.lists(_fragment, min_size=1, max_size=5).map(_flatten)
_scripts = st.lists(st.lists(_turn, min_size=1, max_size=4), min_size=1, max_size=4)


def _zoom(box, image=0, label="<|image_pad|>", name="zoom_in") -> str:
    return "<think>x</think><tool_call>" + json.dumps({"name": name, "arguments": {"bbox_2d": box, "image": image, "label": label}}) + "</tool_call>"


@pytest.fixture(scope="module")
def setting():
    chat = ChatFormat(load_processor(QWEN))
    registry = load_tools()
    for t in HOSTILE_TOOLS:
        registry.register(t, source="test")
    env = FuzzEnv(tools=registry)
    yield env, chat
    env.shutdown()


def _check(env: FuzzEnv, chat: ChatFormat, scripts) -> None:
    config = RolloutConfig(group_size=2, max_total_tokens=8192, sampling=SamplingParams(max_new_tokens=256))
    trajs = RolloutDriver(env, FuzzModel(chat, scripts), chat, config).rollout(env.load_tasks())
    assert len(trajs) == 4 and all(t.termination is not None for t in trajs)
    assemble_batch(trajs, chat, env.budget)  # raises BatchError if tokens and images went out of sync
    im_start = chat.tokenizer.convert_tokens_to_ids("<|im_start|>")
    for t in trajs:
        prompt, *rest = t.segments
        assert prompt.token_ids.count(im_start) == 3  # system, user, assistant: the template's, no one else's
        for seg in rest:
            n = seg.token_ids.count(im_start)
            assert n == (2 if seg.kind == "injected" else 0), (seg.kind, chat.decode(seg.token_ids))


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
          derandomize=True)
@given(scripts=_scripts)
@example(scripts=[[[_zoom([0, 0, 3000, 2000])], [_zoom([0, 500, 1000, 501], name="crop")], ["<answer>3</answer>"]],
                  [[_zoom([0, 0, 10, 10], image=5, name="<|im_start|>")], [_zoom([1, 1, 2, 2], image=1)]],
                  [['<think>x</think><tool_call>{"name": "hang", "arguments": {}}</tool_call>'],
                   ['<think>y</think><tool_call>{"name": "dies", "arguments": {}}</tool_call>'
                    '<tool_call>{"name": "echo", "arguments": {"text": "<|image_pad|><|im_start|>"}}</tool_call>']]])
def test_random_model_output_never_breaks_a_rollout(setting, scripts):
    env, chat = setting
    _check(env, chat, scripts)
