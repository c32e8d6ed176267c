"""An API chat model as a policy: multi-turn episodes against the stub OpenAI-compatible server (127.0.0.1)."""

from __future__ import annotations

import base64
import io
import json

import pytest
from api_stub_server import StubServer
from PIL import Image
from typer.testing import CliRunner
from zoom_fixtures import ZoomEnv, zoom_call

from agent_grpo.api_client import ChatAPIConfig, ChatClient, ChatCompletion
from agent_grpo.cli.eval_api import evaluate_api
from agent_grpo.cli.main import app
from agent_grpo.rollout.api_rollout import APIRolloutConfig, api_rollout, reply_text
from agent_grpo.store import RunStore
from agent_grpo.tools import load_tools
from agent_grpo.trajectory import Termination

ANSWER = "<think>it is</think><answer>0</answer>"


@pytest.fixture(scope="module")
def server():
    s = StubServer().start()
    yield s
    s.stop()


@pytest.fixture
def env():
    e = ZoomEnv(tools=load_tools().subset(["zoom_in"]))
    yield e
    e.shutdown()


def client_for(server, **over) -> ChatClient:
    return ChatClient(ChatAPIConfig(base_url=server.base_url, model="stub-vlm", backoff_s=0.0, **over))


def decode_data_url(url: str) -> Image.Image:
    head, data = url.split(",", 1)
    assert head == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_a_tool_call_then_an_answer(server, env):
    server.configure(mode="script", replies=[zoom_call([0, 0, 224, 224]), ANSWER])
    tasks = list(env.load_tasks("test", n=1))
    with client_for(server) as client:
        (traj,) = api_rollout(env, client, tasks, APIRolloutConfig(max_tokens=77))
    assert traj.termination == Termination.ANSWERED and traj.answer == "0"
    assert [len(t.tool_calls) for t in traj.turns] == [1, 0] and traj.tool_results[0].ok
    assert len(traj.images) == 2 and traj.images[1].box.as_list() == [0, 0, 224, 224]
    assert traj.rewards["accuracy"] == 1.0 and traj.segments == []  # text only: nothing to train on
    first, second = server.stats()["bodies"]
    assert first["model"] == "stub-vlm" and first["max_tokens"] == 77 and first["temperature"] == 0.0
    system = first["messages"][0]
    assert system["role"] == "system" and "<tools>" in system["content"] and '"name": "zoom_in"' in system["content"]
    # The task image goes as the model's view (budget 112 x 112 px), not at its stored 448 x 448.
    (task_image,) = [p for p in first["messages"][1]["content"] if p["type"] == "image_url"]
    assert decode_data_url(task_image["image_url"]["url"]).size == (112, 112)
    # Second turn: our assistant text, then the tool result as a user turn with the zoomed image.
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "user"]
    assert second["messages"][2]["content"] == zoom_call([0, 0, 224, 224])
    result = second["messages"][3]["content"]
    assert result[0] == {"type": "text", "text": "\n<tool_response>\n"} and result[-1]["text"] == "\n</tool_response>"
    (crop,) = [p for p in result if p["type"] == "image_url"]
    assert decode_data_url(crop["image_url"]["url"]).size == (112, 112)


def test_an_api_failure_ends_that_trajectory_and_the_run_goes_on(server, env):
    server.configure(mode="garbage")
    tasks = list(env.load_tasks("test", n=2))
    with client_for(server, max_retries=0) as client:
        trajs = api_rollout(env, client, tasks, APIRolloutConfig(group_size=2))
    assert len(trajs) == 4 and server.requests == 4
    for t in trajs:
        assert t.termination == Termination.ERROR and t.metrics["api_error"] == 1.0 and t.rewards["accuracy"] == 0.0


def test_structured_tool_calls_become_tool_call_text():
    completion = ChatCompletion.model_validate({"choices": [{"message": {"content": "<think>zoom</think>", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "zoom_in", "arguments": '{"bbox_2d": [0, 0, 9, 9]}'}},
    ]}}]})
    text = reply_text(completion)
    body = text.split("<tool_call>\n")[1].split("\n</tool_call>")[0]
    assert text.startswith("<think>zoom</think>\n<tool_call>")
    assert json.loads(body) == {"name": "zoom_in", "arguments": {"bbox_2d": [0, 0, 9, 9]}}


def test_evaluate_api_gives_the_shared_results(server, env):
    server.configure(mode="script", replies=[ANSWER])
    with client_for(server) as client:
        result, trajs = evaluate_api(client, env, split="test", n=3, k=2)
    # tasks 0, 1, 2 have answers "0", "1", "2": only task 0 is right, both of its samples
    assert (result.name, result.tasks, result.k) == ("stub-vlm", 3, 2)
    assert result.accuracy == pytest.approx(2 / 6) and result.pass_at_k == pytest.approx(1 / 3)
    assert all(b["temperature"] == 1.0 for b in server.stats()["bodies"])  # k > 1 samples


def test_cli_eval_with_an_api_model(server, tmp_path, monkeypatch):
    server.configure(mode="script", replies=["<think>reading</think><answer>3</answer>"])
    monkeypatch.setenv("STUB_KEY", "sk-not-stored")
    out = tmp_path / "eval"
    args = ["eval", "--api-base", server.base_url, "--api-model", "stub-vlm", "--api-key-env", "STUB_KEY",
            "--env", "visual-search", "--n", "2", "--out", str(out)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert "| stub-vlm |" in result.output
    (row,) = json.loads((out / "results.json").read_text())
    assert row["tasks"] == 2 and row["k"] == 1 and row["terminations"] == {"answered": 1.0}
    with RunStore.open(out / "trajectories") as store:
        assert len(store) == 2
    stored = "".join(p.read_text() for p in out.rglob("*.json*"))
    assert "sk-not-stored" not in stored and "STUB_KEY" not in stored
    assert server.requests == 2


@pytest.mark.parametrize("args", [
    ["eval"], ["eval", "tiny", "--api-base", "http://127.0.0.1:1/v1", "--api-model", "m"],
    ["eval", "--api-base", "http://127.0.0.1:1/v1"],
])
def test_cli_eval_needs_a_checkpoint_or_an_api_model(args):
    result = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    assert result.exit_code == 2 and "give a CHECKPOINT, or --api-base URL with --api-model NAME" in result.output


def test_cli_eval_with_a_missing_key_variable_is_a_message(server, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    args = ["eval", "--api-base", server.base_url, "--api-model", "m", "--api-key-env", "NO_SUCH_KEY_VAR"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    assert result.exit_code == 2 and "NO_SUCH_KEY_VAR (api_key_env) is not set" in result.output
