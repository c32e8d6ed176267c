"""Parsing one model turn: `<think>`, `<tool_call>` (several allowed) and `<answer>`.

Never raises on model output. Problems are reported in `ParsedTurn.problems`, and a tool call whose
body is not `{"name": str, "arguments": {...}}` JSON is kept with `parse_error` set, so the model is
told what was wrong.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

from agent_grpo.trajectory import ToolCall

# Blocks are found with `str.find`, never with lazy regexes: `<think>(.*?)</think>` rescans the rest of
# the text from every unclosed `<think>`, quadratic in the length of a hostile turn.
_CLOSING = ("</think>", "</tool_call>", "</answer>")
# End-of-turn markers a generation may include; they are not "trailing text".
_END_MARKERS = ("<|im_end|>", "<|endoftext|>")


class ParsedTurn(BaseModel):
    think: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    answer: str | None = None
    problems: list[str] = Field(default_factory=list)

    @property
    def format_ok(self) -> bool:
        return not self.problems


def _outside_calls(text: str) -> str:
    """`text` without its closed `<tool_call>...</tool_call>` blocks (one pass: linear)."""
    parts, pos = [], 0
    while (start := text.find("<tool_call>", pos)) >= 0 and (close := text.find("</tool_call>", start)) >= 0:
        parts.append(text[pos:start])
        pos = close + len("</tool_call>")
    parts.append(text[pos:])
    return " ".join(parts)


def _blocks(text: str, open_tag: str, close_tag: str, stop_at_open: bool = False) -> list[tuple[str, bool]]:
    """Non-overlapping `open_tag ... close_tag` blocks, left to right: (body, closed) pairs. One pass, linear.

    An unclosed block runs to the end of the text (or, with `stop_at_open`, to the next `open_tag`);
    without `stop_at_open` an unclosed block ends the scan. With `stop_at_open` a body never holds `open_tag`.
    """
    out: list[tuple[str, bool]] = []
    pos = 0
    while (start := text.find(open_tag, pos)) >= 0:
        body_start = start + len(open_tag)
        close = text.find(close_tag, body_start)
        nxt = text.find(open_tag, body_start) if stop_at_open else -1
        if close >= 0 and (nxt < 0 or close < nxt):
            out.append((text[body_start:close], True))
            pos = close + len(close_tag)
        elif nxt >= 0:
            out.append((text[body_start:nxt], False))
            pos = nxt
        else:
            out.append((text[body_start:], False))
            break
    return out


def _unfence(text: str) -> str:
    """The inside of a ```json ... ``` fence (the whole text), else the text unchanged."""
    if len(text) >= 6 and text.startswith("```") and text.endswith("```"):
        inner = text[3:-3]
        return inner.removeprefix("json").strip()
    return text


def parse_tool_call(body: str, call_id: str) -> ToolCall:
    """Parse the text between `<tool_call>` and `</tool_call>`."""
    raw = body
    text = _unfence(body.strip())
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:  # ValueError also covers ints over Python's digit limit
        msg = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply or number too long"
        return ToolCall(id=call_id, name="", raw=raw, parse_error=f"invalid JSON ({msg})")
    if not isinstance(data, dict):
        return ToolCall(id=call_id, name="", raw=raw, parse_error="expected a JSON object with 'name' and 'arguments'")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        return ToolCall(id=call_id, name="", raw=raw, parse_error="missing or non-string 'name'")
    args = data.get("arguments", data.get("parameters", {}))
    if isinstance(args, str):  # some models emit arguments as a JSON string
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):
            return ToolCall(id=call_id, name=name, raw=raw, parse_error="'arguments' is a string that is not JSON")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return ToolCall(id=call_id, name=name, raw=raw, parse_error="'arguments' must be a JSON object")
    return ToolCall(id=call_id, name=name, arguments=args, raw=raw)


def parse_turn(text: str, call_id_prefix: str = "call") -> ParsedTurn:
    """Split a model turn into thinking, tool calls and answer, noting format problems."""
    out = ParsedTurn()
    body = text
    for marker in _END_MARKERS:
        body = body.replace(marker, "")

    thinks = [b for b, closed in _blocks(body, "<think>", "</think>") if closed]
    if thinks:
        out.think = thinks[0].strip()
        if len(thinks) > 1:
            out.problems.append("more than one <think> block")
    else:
        out.problems.append("missing <think>...</think>")
    after_think = body.split("</think>", 1)[1] if "</think>" in body else body

    # An unterminated call ends where the next <tool_call> opens, so the next call is not swallowed.
    for k, (call_body, closed) in enumerate(_blocks(after_think, "<tool_call>", "</tool_call>", stop_at_open=True)):
        call = parse_tool_call(call_body, f"{call_id_prefix}_{k}")
        if not closed:
            out.problems.append("unterminated <tool_call>")
        out.tool_calls.append(call)
        if call.parse_error:
            out.problems.append(f"tool call {k}: {call.parse_error}")

    outside = _outside_calls(after_think)  # a call's JSON may hold the text "<answer>" (a key, a label)
    answers = [b for b, _ in _blocks(outside, "<answer>", "</answer>")]
    if answers:
        out.answer = answers[-1].strip()
        if "</answer>" not in outside:
            out.problems.append("unterminated <answer>")
        if len(answers) > 1:
            out.problems.append("more than one <answer>")
    if out.answer is not None and out.tool_calls:
        out.problems.append("a turn must either call tools or answer, not both")
    if out.answer is None and not out.tool_calls:
        out.problems.append("no <tool_call> and no <answer>")

    last_close = max(body.rfind(tag) + len(tag) if tag in body else -1 for tag in _CLOSING)
    if last_close >= 0 and body[last_close:].strip():
        out.problems.append("text after the last closing tag")
    return out
