import json

from hypothesis import given, settings
from hypothesis import strategies as st

from agent_grpo.parsing import parse_tool_call, parse_turn

ZOOM = '{"name": "zoom_in", "arguments": {"bbox_2d": [10, 20, 110, 220], "label": "sign"}}'


def test_well_formed_tool_turn():
    out = parse_turn(f"<think>The sign is small.</think>\n<tool_call>\n{ZOOM}\n</tool_call><|im_end|>")
    assert out.format_ok and out.problems == []
    assert out.think == "The sign is small."
    assert out.answer is None
    [call] = out.tool_calls
    assert (call.id, call.name, call.parse_error) == ("call_0", "zoom_in", None)
    assert call.arguments == {"bbox_2d": [10, 20, 110, 220], "label": "sign"}
    assert call.raw == f"\n{ZOOM}\n"  # as sampled, between the tags


def test_well_formed_answer_turn():
    out = parse_turn("<think>It reads STOP.</think> <answer> STOP </answer>")
    assert out.format_ok
    assert (out.think, out.answer, out.tool_calls) == ("It reads STOP.", "STOP", [])


def test_several_tool_calls_in_one_turn():
    crop = '{"name": "crop", "arguments": {"bbox_2d": [0, 0, 500, 500]}}'
    out = parse_turn(f"<think>two places</think><tool_call>{ZOOM}</tool_call>\n<tool_call>{crop}</tool_call>",
                     call_id_prefix="t3")
    assert out.format_ok
    assert [(c.id, c.name) for c in out.tool_calls] == [("t3_0", "zoom_in"), ("t3_1", "crop")]


def test_malformed_json_is_kept_with_its_error():
    out = parse_turn('<think>x</think><tool_call>{"name": "zoom_in", "arguments": {</tool_call>')
    [call] = out.tool_calls
    assert call.name == "" and call.parse_error.startswith("invalid JSON")
    assert call.raw == '{"name": "zoom_in", "arguments": {'
    assert not out.format_ok and out.problems == [f"tool call 0: {call.parse_error}"]


def test_tool_call_body_errors():
    assert parse_tool_call("[1, 2]", "c").parse_error == "expected a JSON object with 'name' and 'arguments'"
    assert parse_tool_call('{"arguments": {}}', "c").parse_error == "missing or non-string 'name'"
    assert parse_tool_call('{"name": "zoom_in", "arguments": [1]}', "c").parse_error == (
        "'arguments' must be a JSON object"
    )
    assert parse_tool_call('{"name": "zoom_in", "arguments": "{oops"}', "c").parse_error == (
        "'arguments' is a string that is not JSON"
    )
    deep = parse_tool_call("[" * 100_000 + "]" * 100_000, "c")
    assert deep.parse_error.startswith("invalid JSON")
    # an integer over Python's 4,300-digit conversion limit raises ValueError, not JSONDecodeError
    huge = parse_tool_call('{"name": "zoom_in", "arguments": {"x": ' + "9" * 5000 + "}}", "c")
    assert huge.parse_error.startswith("invalid JSON")
    huge_str = parse_tool_call(json.dumps({"name": "zoom_in", "arguments": '{"x": ' + "9" * 5000 + "}"}), "c")
    assert huge_str.parse_error == "'arguments' is a string that is not JSON"


def test_arguments_as_string_parameters_key_and_null():
    as_string = json.dumps({"name": "zoom_in", "arguments": json.dumps({"bbox_2d": [1, 2, 3, 4]})})
    assert parse_tool_call(as_string, "c").arguments == {"bbox_2d": [1, 2, 3, 4]}
    assert parse_tool_call('{"name": "zoom_in", "parameters": {"x": 1}}', "c").arguments == {"x": 1}
    null = parse_tool_call('{"name": "zoom_in", "arguments": null}', "c")
    assert (null.arguments, null.parse_error) == ({}, None)


def test_code_fenced_json():
    out = parse_turn(f"<think>x</think><tool_call>\n```json\n{ZOOM}\n```\n</tool_call>")
    assert out.format_ok and out.tool_calls[0].name == "zoom_in"
    assert parse_tool_call(f"```\n{ZOOM}\n```", "c").parse_error is None


def test_missing_tags():
    assert parse_turn("<answer>3</answer>").problems == ["missing <think>...</think>"]
    out = parse_turn("<think>hmm</think> I think it is 3.")
    assert out.answer is None and out.tool_calls == []
    assert out.problems == ["no <tool_call> and no <answer>", "text after the last closing tag"]
    assert parse_turn("").problems == ["missing <think>...</think>", "no <tool_call> and no <answer>"]


def test_unterminated_tags():
    out = parse_turn(f"<think>x</think><tool_call>{ZOOM}")
    assert out.tool_calls[0].name == "zoom_in"  # still read, but the turn is malformed
    assert "unterminated <tool_call>" in out.problems
    out = parse_turn("<think>x</think><answer>3")
    assert out.answer == "3" and "unterminated <answer>" in out.problems
    out = parse_turn("<think>still thinking")
    assert out.think is None and "missing <think>...</think>" in out.problems


def test_unterminated_call_does_not_swallow_the_next_one():
    out = parse_turn(f'<think>x</think><tool_call>{{"name": "zoom_in"<tool_call>{ZOOM}</tool_call>')
    assert [c.name for c in out.tool_calls] == ["", "zoom_in"]
    assert out.tool_calls[1].parse_error is None
    assert "unterminated <tool_call>" in out.problems


def test_trailing_text_and_end_markers():
    assert parse_turn("<think>x</think><answer>3</answer> Hope that helps!").problems == [
        "text after the last closing tag"
    ]
    assert parse_turn("<think>x</think><answer>3</answer>\n<|im_end|><|endoftext|>").format_ok


def test_answer_and_tool_call_in_one_turn():
    out = parse_turn(f"<think>x</think><tool_call>{ZOOM}</tool_call><answer>3</answer>")
    assert out.answer == "3" and len(out.tool_calls) == 1
    assert out.problems == ["a turn must either call tools or answer, not both"]


def test_repeated_blocks():
    out = parse_turn("<think>a</think><think>b</think><answer>1</answer><answer>2</answer>")
    assert (out.think, out.answer) == ("a", "2")
    assert out.problems == ["more than one <think> block", "more than one <answer>"]


def test_answer_tags_inside_a_call_s_json_are_arguments_not_an_answer():
    """Found by hypothesis: the key "<answer>" in a call's arguments made the turn 'unterminated <answer>'."""
    out = parse_turn('<think>x</think><tool_call>{"name": "zoom_in", "arguments": {"<answer>": "</answer> 7"}}</tool_call>')
    assert out.problems == [] and out.answer is None
    assert out.tool_calls[0].arguments == {"<answer>": "</answer> 7"}
    both = parse_turn('<think>x</think><tool_call>{"name": "a", "arguments": {"k": "<answer>"}}</tool_call><answer>3</answer>')
    assert both.answer == "3" and "unterminated <answer>" not in both.problems  # the real answer is still seen


def test_tool_call_inside_think_is_not_a_call():
    out = parse_turn(f"<think>maybe <tool_call>{ZOOM}</tool_call>?</think><answer>3</answer>")
    assert out.tool_calls == [] and out.answer == "3" and out.format_ok


# ---- properties --------------------------------------------------------------------------------

TAGS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<answer>", "</answer>", "<|im_end|>", "```json", "```"]
PIECES = TAGS + [ZOOM, "{", "}", '"name"', '"arguments"', ":", ",", '"zoom_in"', "[1, 2]", "\n", " ", "x", "3"]
tag_soup = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=8)), max_size=40).map("".join)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=300), tag_soup))
def test_any_text_parses_without_raising(text):
    out = parse_turn(text, call_id_prefix="t0")
    ids = [c.id for c in out.tool_calls]
    assert len(ids) == len(set(ids))
    assert out.format_ok == (not out.problems)
    if out.format_ok:
        assert (out.answer is None) != (not out.tool_calls)  # exactly one of answer / calls
        assert all(c.parse_error is None and c.name for c in out.tool_calls)


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=10))
arguments = st.dictionaries(st.text(max_size=8), st.one_of(json_scalars, st.lists(json_scalars, max_size=4)),
                            max_size=4)
names = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=12)
plain = st.text(max_size=40).filter(lambda s: "<" not in s and s.strip() == s)


@settings(max_examples=200, deadline=None)
@given(plain, st.lists(st.tuples(names, arguments), min_size=1, max_size=4))
def test_well_formed_calls_round_trip(think, calls):
    text = f"<think>{think}</think>" + "".join(
        f"\n<tool_call>\n{json.dumps({'name': n, 'arguments': a})}\n</tool_call>" for n, a in calls
    )
    out = parse_turn(text)
    assert out.problems == []
    assert out.think == think.strip()
    assert [(c.name, c.arguments) for c in out.tool_calls] == calls


def _parse_seconds(text: str) -> float:
    import time

    start = time.process_time()
    parse_turn(text)
    return time.process_time() - start


def test_hostile_turns_parse_in_linear_time():
    # Unclosed tags repeated over 200k characters: the lazy regexes rescanned the rest of the text from each
    # one (98k characters of `<think>` took 27 s). Linear parsing takes milliseconds; the bound is generous
    # so a loaded machine cannot fail it, and it is CPU time, so waiting for a core does not count.
    n = 200_000
    hostile = [
        "<think>" * (n // 7),
        "<tool_call>" * (n // 110),  # each one is a call to report: fewer
        "<answer>" * (n // 8),
        "<think>x</think>" + "<answer>" * (n // 8),
        "<think>x</think><tool_call>```" + " " * n + "x",
        "<think>x</think><tool_call>" + "<" * n,
    ]
    for text in hostile:
        assert _parse_seconds(text) < 2.0, text[:40]


def test_unclosed_blocks_keep_their_meaning():
    out = parse_turn("<think>a<think>b</think><tool_call>{\"name\": \"x\"}<tool_call>{\"name\": \"y\"}</tool_call>")
    assert out.think == "a<think>b"
    assert [c.name for c in out.tool_calls] == ["x", "y"]
    assert "unterminated <tool_call>" in out.problems
    out = parse_turn("<think>t</think><answer>1</answer><answer> 2 ")
    assert out.answer == "2" and "more than one <answer>" in out.problems
    fenced = parse_turn('<think>t</think><tool_call>```json\n{"name": "z", "arguments": {}}\n```</tool_call>')
    assert fenced.tool_calls[0].name == "z" and fenced.tool_calls[0].parse_error is None
