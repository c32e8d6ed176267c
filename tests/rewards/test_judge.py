"""The LLM-judge reward against a real OpenAI-compatible HTTP server on 127.0.0.1 (tests/api_stub_server.py)."""

from __future__ import annotations

import json

import pytest
from api_stub_server import StubServer

from agent_grpo.api_client import (
    APIConnectionError,
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    ChatAPIConfig,
    ChatClient,
    ChatMessage,
)
from agent_grpo.rewards import RewardError, Rubric, conditional_tool_bonus, deepeyes_rubric, reward
from agent_grpo.rewards.judge import Judge, JudgeCache, JudgeConfig, judge_accuracy, parse_verdict
from agent_grpo.train.metrics import trajectory_metrics


@pytest.fixture(scope="module")
def server():
    s = StubServer().start()
    yield s
    s.stop()


@pytest.fixture
def stub(server):
    if not server.alive():  # a test killed it on purpose
        server.start()
    server.configure(mode="judge")
    return server


def judge_config(stub, tmp_path=None, **over) -> JudgeConfig:
    fields = dict(base_url=stub.base_url, model="judge-model", timeout_s=5.0, max_retries=2, backoff_s=0.01)
    if tmp_path is not None:
        fields["cache_path"] = tmp_path / "judge_cache.jsonl"
    return JudgeConfig(**{**fields, **over})


def group_of(mk, answers, reference="tan"):
    return [mk.solved(a, ok=1, reference=reference, id=f"t{i}") for i, a in enumerate(answers)]


# ---- verdict parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(("reply", "verdict"), [
    ("Judgement: 1", 1.0), ("judgment: 0", 0.0), ("**Judgement:** 1", 1.0), ("Judement: 1", 1.0),
    ("The answers differ.\nJudgement: 0", 0.0), ("1", 1.0), ("0.", 0.0), ("Yes", 1.0), ("incorrect", 0.0),
    ("<think>Judgement: 0? no wait</think>\nJudgement: 1", 1.0),  # thinking is skipped
    ("Judgement: 0 ... on reflection, Judgement: 1", 1.0),  # the last verdict counts
])
def test_parse_verdict_reads_the_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


@pytest.mark.parametrize("reply", ["", "I like turtles.", "Judgement: maybe", "10", "It is 1 or 0"])
def test_parse_verdict_refuses_replies_without_one(reply):
    assert parse_verdict(reply) is None


def test_template_fields_are_checked():
    base = dict(base_url="http://127.0.0.1:1/v1", model="m")
    with pytest.raises(ValueError, match="unknown fields"):
        JudgeConfig(**base, template="{answer} {reference} {image}")
    with pytest.raises(ValueError, match="must contain"):
        JudgeConfig(**base, template="{question} {answer}")
    with pytest.raises(ValueError, match="literal braces"):
        JudgeConfig(**base, template='{"answer": {answer}, {reference}')
    assert JudgeConfig(**base, template='{{"a": "{answer}"}} {reference}').template


# ---- against the server ----------------------------------------------------------------------------


def test_judge_verdicts_become_accuracy_and_drive_the_tool_bonus(stub, mk, tmp_path):
    rubric = Rubric([judge_accuracy(judge_config(stub, tmp_path), weight=0.8), conditional_tool_bonus(weight=1.2)])
    group = group_of(mk, ["Tan", "blue", "tan "])
    rubric.score(group)
    assert [t.rewards["accuracy"] for t in group] == [1.0, 0.0, 1.0]
    assert [t.reward for t in group] == pytest.approx([2.0, 0.0, 2.0])
    assert all(not t.reward_errors and "reward_errors" not in t.metrics for t in group)
    body = stub.stats()["bodies"][0]
    assert body["model"] == "judge-model" and body["temperature"] == 0.0
    prompt = body["messages"][-1]["content"]
    assert "Question: How many?" in prompt and "Reference: tan" in prompt


def test_the_deepeyes_environment_grades_with_the_judge_when_asked(stub, mk, tmp_path):
    """`reward: judge` in the deepeyes env's options reaches this judge (its accuracy, weight 0.8)."""
    from agent_grpo_envs.deepeyes import DeepEyesEnv

    options = judge_config(stub, tmp_path).model_dump(mode="json")
    env = DeepEyesEnv(reward="judge", judge=options, allow_tools=False)
    group = group_of(mk, ["Tan", "blue"])
    env.rubric.score(group)
    assert [t.rewards["accuracy"] for t in group] == [1.0, 0.0] and env.rubric.weights["accuracy"] == 0.8
    assert stub.requests == 2


def test_equal_answers_share_one_request_and_the_cache_survives_a_restart(stub, mk, tmp_path):
    cfg = judge_config(stub, tmp_path)
    judged = judge_accuracy(cfg)
    Rubric([judged]).score(group_of(mk, ["tan", "tan", "blue", "tan"]))
    assert stub.requests == 2  # "tan" once, "blue" once
    # A new process (a resumed run) reads the file: nothing is asked again.
    group = group_of(mk, ["blue", "tan"])
    Rubric([judge_accuracy(cfg)]).score(group)
    assert stub.requests == 2
    assert [t.rewards["accuracy"] for t in group] == [0.0, 1.0]
    lines = (tmp_path / "judge_cache.jsonl").read_text().splitlines()
    assert len(lines) == 2 and {json.loads(x)["answer"] for x in lines} == {"tan", "blue"}


def test_cache_key_holds_model_and_template(stub, mk, tmp_path):
    Rubric([judge_accuracy(judge_config(stub, tmp_path))]).score(group_of(mk, ["tan"]))
    Rubric([judge_accuracy(judge_config(stub, tmp_path, model="other"))]).score(group_of(mk, ["tan"]))
    other_template = "Q {question}\nReference: {reference}\nAnswer: {answer}\nJudgement?"
    Rubric([judge_accuracy(judge_config(stub, tmp_path, template=other_template))]).score(group_of(mk, ["tan"]))
    assert stub.requests == 3


def test_torn_last_line_is_skipped_and_kept_aside(stub, mk, tmp_path):
    cfg = judge_config(stub, tmp_path)
    Rubric([judge_accuracy(cfg)]).score(group_of(mk, ["tan"]))
    path = tmp_path / "judge_cache.jsonl"
    good = path.read_bytes()
    with path.open("ab") as f:
        f.write(b'{"key": "half a line')  # a writer killed mid-line
    cache = JudgeCache(path)
    assert len(cache) == 1  # the complete line is read, the torn one is not
    Rubric([judge_accuracy(cfg)]).score(group_of(mk, ["tan", "blue"]))
    assert stub.requests == 2  # only "blue" was asked
    data = path.read_bytes()
    assert data.startswith(good) and data.count(b"\n") == 2 and b"half a line" not in data  # nothing overwritten
    kept = list(tmp_path.glob("judge_cache-*.part"))
    assert len(kept) == 1 and kept[0].read_bytes() == b'{"key": "half a line'


def test_time_out_is_a_reward_error_and_the_run_goes_on(stub, mk):
    stub.configure(mode="judge", delay_s=1.5)
    cfg = judge_config(stub, timeout_s=0.3, max_retries=1)
    rubric = deepeyes_rubric(judge=cfg)
    group = group_of(mk, ["tan", "blue"])
    rubric.score(group)  # does not raise
    for t in group:
        assert t.rewards == {"accuracy": 0.0, "format": 1.0, "tool_bonus": 0.0}
        assert "no answer within 0.3 s" in t.reward_errors["accuracy"] and "2 attempts" in t.reward_errors["accuracy"]
        assert t.metrics["reward_errors"] == 1.0
    assert stub.requests == 4  # two answers, two attempts each
    # The next group, once the judge is back, is scored normally (time-outs are not cached).
    stub.configure(mode="judge")
    group = group_of(mk, ["tan", "blue"])
    rubric.score(group)
    assert [t.rewards["accuracy"] for t in group] == [1.0, 0.0] and not group[0].reward_errors


@pytest.mark.parametrize(("mode", "message"), [
    ("garbage", "not JSON"), ("no_choices", "not a chat completion (choices"), ("nonsense", "gave no verdict: 'I like"),
])
def test_garbage_answers_are_reward_errors(stub, mk, tmp_path, mode, message):
    stub.configure(mode=mode)
    group = group_of(mk, ["tan"])
    Rubric([judge_accuracy(judge_config(stub, tmp_path))]).score(group)
    assert group[0].rewards["accuracy"] == 0.0
    assert message in group[0].reward_errors["accuracy"]
    assert stub.requests == 1  # a 200 reply is not retried
    assert not (tmp_path / "judge_cache.jsonl").exists()  # and never cached


def test_server_errors_are_retried_with_backoff(stub, mk):
    stub.configure(mode="judge", fail_first=2, status=503)
    group = group_of(mk, ["tan"])
    Rubric([judge_accuracy(judge_config(stub, max_retries=2))]).score(group)
    assert group[0].rewards["accuracy"] == 1.0 and not group[0].reward_errors
    assert stub.requests == 3


def test_429_is_retried_but_400_is_not(stub):
    msg = [ChatMessage(role="user", content="hi")]
    stub.configure(mode="nonsense", fail_first=1, status=429)
    with ChatClient(ChatAPIConfig(base_url=stub.base_url, model="m", max_retries=1, backoff_s=0.0)) as client:
        assert client.complete(msg).text == "I like turtles."
        stub.configure(mode="nonsense", fail_first=5, status=400)
        with pytest.raises(APIStatusError, match="HTTP 400") as info:
            client.complete(msg)
    assert info.value.status == 400 and stub.requests == 1


def test_a_server_that_dies_is_a_reward_error(stub, mk):
    stub.configure(mode="die")
    group = group_of(mk, ["tan"])
    Rubric([judge_accuracy(judge_config(stub, max_retries=1))]).score(group)
    stub.proc.wait(timeout=10)
    assert group[0].rewards["accuracy"] == 0.0 and "judge judge-model" in group[0].reward_errors["accuracy"]
    # Nothing listens any more: a refused connection is a reward error too.
    group = group_of(mk, ["blue"])
    Rubric([judge_accuracy(judge_config(stub, max_retries=0))]).score(group)
    assert "ConnectError" in group[0].reward_errors["accuracy"]


def test_client_error_types(stub):
    msg = [ChatMessage(role="user", content="hi")]
    cfg = ChatAPIConfig(base_url=stub.base_url, model="m", max_retries=0, timeout_s=0.2)
    stub.configure(mode="garbage")
    with ChatClient(cfg) as client, pytest.raises(APIResponseError):
        client.complete(msg)
    stub.configure(mode="nonsense", delay_s=1.0)
    with ChatClient(cfg) as client, pytest.raises(APITimeoutError):
        client.complete(msg)
    dead = ChatAPIConfig(base_url="http://127.0.0.1:9/v1", model="m", max_retries=0)
    with ChatClient(dead) as client, pytest.raises(APIConnectionError):
        client.complete(msg)


def test_api_key_comes_from_the_named_variable_and_is_never_stored(stub, monkeypatch):
    cfg = ChatAPIConfig(base_url=stub.base_url, model="m", api_key_env="AGENT_GRPO_TEST_KEY")
    with ChatClient(cfg) as client:
        with pytest.raises(Exception, match="AGENT_GRPO_TEST_KEY .* is not set"):
            client.complete([ChatMessage(role="user", content="hi")])
        monkeypatch.setenv("AGENT_GRPO_TEST_KEY", "sk-secret")
        stub.configure(mode="nonsense")
        client.complete([ChatMessage(role="user", content="hi")])
    assert "sk-secret" not in cfg.model_dump_json()


def test_group_reward_error_counts_in_step_metrics(mk):
    @reward(scope="group")
    def flaky(group):
        return [1.0, RewardError("judge down")]

    group = [mk.solved("7", id="a"), mk.solved("7", id="b")]
    Rubric([flaky]).score(group)
    assert [t.rewards["flaky"] for t in group] == [1.0, 0.0]
    assert group[1].reward_errors == {"flaky": "judge down"} and not group[0].reward_errors
    assert trajectory_metrics(group)["reward_errors"] == 0.5  # errors per trajectory over the step


def test_trajectory_reward_error_is_recorded_and_cleared_on_rescore(mk):
    state = {"down": True}

    @reward
    def judged(traj):
        if state["down"]:
            raise RewardError("time-out")
        return 1.0

    t = mk.solved("7")
    Rubric([judged]).score([t])
    assert t.rewards == {"judged": 0.0} and t.reward_errors == {"judged": "time-out"} and t.metrics["reward_errors"] == 1
    state["down"] = False
    Rubric([judged]).score([t])
    assert t.rewards == {"judged": 1.0} and not t.reward_errors and "reward_errors" not in t.metrics


def test_blank_answers_score_zero_without_a_request(stub, mk):
    group = [mk.solved("  ", id="a"), mk.traj([mk.answer_turn(0, None)], id="b")]
    Rubric([judge_accuracy(judge_config(stub))]).score(group)
    assert [t.rewards["accuracy"] for t in group] == [0.0, 0.0] and stub.requests == 0


def test_calls_run_in_parallel(stub, mk):
    stub.configure(mode="judge", delay_s=0.5)
    judge = Judge(judge_config(stub, workers=3))
    out = judge.grade_many([("q", a, "tan") for a in ["tan", "a", "b", "c", "d", "e"]])
    assert out == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0] and judge.calls == 6
    assert 2 <= stub.stats()["max_in_flight"] <= 3  # at once (3 unless a busy machine staggers them), never more
