"""Server mode: a real `agent-grpo serve-engine` process on 127.0.0.1 and the `ServerEngine` client.

One server per module (the tiny model; start-up ~10-60 s on a busy 2-core CPU). The trainer's side is
this test process: its HF model is the reference (as in test_vllm_engine.py, tolerance 1e-4 on text
logprobs, image prompts included).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import urllib.error
import urllib.request

import pytest
import torch

spec = importlib.util.find_spec("vllm")
if spec is None or spec.origin is None:
    pytest.skip("vLLM is not installed (bash scripts/setup_vllm.sh)", allow_module_level=True)

from server_fixtures import ServerProcess  # noqa: E402
from zoom_fixtures import TWO_ZOOMS, ZoomEnv  # noqa: E402

from agent_grpo.content import Message  # noqa: E402
from agent_grpo.models.chat import ChatFormat  # noqa: E402
from agent_grpo.models.tiny import build_tiny_model  # noqa: E402
from agent_grpo.rollout import HFEngine, RolloutConfig, RolloutDriver, assemble_batch, forward_logprobs  # noqa: E402
from agent_grpo.rollout.engine import GenRequest, SamplingParams  # noqa: E402
from agent_grpo.rollout.server_engine import EngineServerError, ServerEngine, ServerSettings  # noqa: E402
from agent_grpo.rollout.server_protocol import GenerateCall, WireRequest, encode_image  # noqa: E402
from agent_grpo.tools import load_tools  # noqa: E402
from agent_grpo.trajectory import Termination  # noqa: E402

torch.set_num_threads(1)
TOL = 1e-4


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = ServerProcess(["rollout.server.max_images=4"], tmp_path_factory.mktemp("server") / "server.log")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def setup(server, tmp_path_factory):
    model, processor = build_tiny_model(size="S", seed=0)
    chat = ChatFormat(processor)
    engine = ServerEngine(ServerSettings(url=server.url, retries=0), chat, max_images=4,
                          weights_dir=tmp_path_factory.mktemp("weights"))
    engine.sync_weights(model)
    yield model, chat, engine
    engine.close()


class ScriptedZoomEnv(ZoomEnv):
    """ZoomEnv whose tools follow TWO_ZOOMS (a zoom, a zoom into the crop, an answer) whatever the random tiny
    model writes; the conversation keeps the model's own text, so the driver's token-exact checks still hold."""

    def step(self, episode, text, truncated=False):
        new = super().step(episode, TWO_ZOOMS[episode.usage.turns], truncated=False)
        messages = episode.trajectory.messages
        messages[len(messages) - 1 - len(new)] = Message.text("assistant", text)  # the turn's assistant message
        return new


@pytest.fixture
def zoom_env():
    env = ScriptedZoomEnv(tools=load_tools().subset(["zoom_in"]))
    yield env
    env.shutdown()


def prompt(chat, text: str) -> list[int]:
    return chat.encode(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")


def trainer_logprobs(model, context: list[int], sampled: list[int], temperature: float = 1.0) -> torch.Tensor:
    ids = torch.tensor([context + sampled])
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=False).logits[0, len(context) - 1 : -1].float() / temperature
    return torch.log_softmax(out, -1).gather(-1, torch.tensor(sampled)[:, None])[:, 0]


def test_greedy_text_turns_equal_the_trainers_tokens_and_logprobs(setup):
    model, chat, engine = setup
    requests = [GenRequest(token_ids=prompt(chat, q), key=f"k{i}") for i, q in enumerate(["Hello there", "Which digit?"])]
    params = SamplingParams(greedy=True, max_new_tokens=24)
    ours, ref = engine.generate(requests, params), HFEngine(model, chat).generate(requests, params)
    for a, b in zip(ours, ref, strict=True):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason and a.stop_text == b.stop_text
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < TOL


def test_sampled_logprobs_are_raw_at_the_temperature_and_seeded_per_trajectory(setup):
    model, chat, engine = setup
    ctx = prompt(chat, "Hello there")
    params = SamplingParams(temperature=0.7, top_k=20, max_new_tokens=16, seed=3)
    me = GenRequest(token_ids=ctx, key="me", turn=1)
    alone = engine.generate([me], params)[0]
    assert (torch.tensor(alone.logprobs) - trainer_logprobs(model, ctx, alone.token_ids, 0.7)).abs().max() < TOL
    others = [GenRequest(token_ids=prompt(chat, f"other {i}"), key=f"o{i}", turn=1) for i in range(2)]
    batched = engine.generate([others[0], me, others[1]], params)[1]
    assert batched == alone  # a trajectory's sample does not depend on the rest of the batch (nor on the wire)


def test_multi_turn_rollouts_with_images_through_the_server(setup, zoom_env):
    """Whole trajectories (task image + two tool crops) through the real driver: token-exact structure,
    every image crossed the wire hash-checked, and a second rollout with the same seed is identical."""
    _, chat, engine = setup
    config = RolloutConfig(group_size=2, max_total_tokens=1024, sampling=SamplingParams(max_new_tokens=12))
    tasks = zoom_env.load_tasks(n=2)
    trajs = RolloutDriver(zoom_env, engine, chat, config).rollout(tasks, step=1, seed=5)
    assert len(trajs) == 4
    for t in trajs:
        assert t.termination == Termination.ANSWERED and len(t.images) == 3  # two crops, three turns
        sampled = [s for s in t.segments if s.kind == "sampled"]
        assert len(sampled) == 3 and all(len(s.logprobs) == len(s.token_ids) > 0 for s in sampled)
        ids = [i for s in t.segments for i in s.token_ids]
        assert ids.count(chat.tokenizer.convert_tokens_to_ids("<|vision_start|>")) == 3
    again = RolloutDriver(zoom_env, engine, chat, config).rollout(tasks, step=1, seed=5)
    for a, b in zip(trajs, again, strict=True):
        assert [(s.token_ids, s.logprobs) for s in a.segments] == [(s.token_ids, s.logprobs) for s in b.segments]
    assert trajs[0].segments[1].token_ids != trajs[1].segments[1].token_ids  # group members sample apart


def test_multi_turn_image_logprobs_match_the_trainer(setup, zoom_env):
    model, chat, engine = setup
    config = RolloutConfig(group_size=2, max_total_tokens=1024, sampling=SamplingParams(max_new_tokens=12))
    trajs = RolloutDriver(zoom_env, engine, chat, config).rollout(zoom_env.load_tasks(n=1), step=1, seed=5)
    for t in trajs:
        batch = assemble_batch([t], chat, zoom_env.budget)
        with torch.no_grad():
            lp, _ = forward_logprobs(model, batch)
        mask = batch.loss_mask[0].bool()
        theirs = torch.tensor([x for s in t.segments if s.kind == "sampled" for x in s.logprobs])
        assert (theirs - lp[0][mask]).abs().max() < TOL


def perturbed(model, scale: float = 0.05, vision_only: bool = False):
    new = copy.deepcopy(model)
    params = new.model.visual.parameters() if vision_only else new.parameters()
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * scale)
    return new


def test_after_a_push_the_server_samples_from_the_trainers_new_weights(setup):
    """A trainer step (a perturbation of every weight), pushed: the server's logprobs are the new model's."""
    model, chat, engine = setup
    ctx = prompt(chat, "Hello there")
    params = SamplingParams(temperature=1.0, max_new_tokens=16, seed=7)
    before = engine.generate([GenRequest(token_ids=ctx, key="w")], params)[0]
    new = perturbed(model)
    engine.sync_weights(new)
    try:
        after = engine.generate([GenRequest(token_ids=ctx, key="w")], params)[0]
        assert (torch.tensor(after.logprobs) - trainer_logprobs(new, ctx, after.token_ids)).abs().max() < TOL
        assert (trainer_logprobs(model, ctx, after.token_ids) - torch.tensor(after.logprobs)).abs().max() > 1e-2
        assert list(engine.weights_dir.glob("*.safetensors")) == [engine._weights_file]  # older files removed
    finally:
        engine.sync_weights(model)
    assert engine.generate([GenRequest(token_ids=ctx, key="w")], params)[0] == before


def test_a_push_resets_the_servers_image_caches(setup, zoom_env):
    """Only the vision tower changes: an image the server has already encoded must be encoded again."""
    model, chat, engine = setup
    task = zoom_env.load_tasks(n=1)[0]
    view = zoom_env.budget.view(task.images[0].pil, task.images[0].source)
    ids = chat.encode("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Which digit?<|im_end|>\n"
                      "<|im_start|>assistant\n", [view])
    request, params = GenRequest(token_ids=ids, images=[view], key="img"), SamplingParams(greedy=True, max_new_tokens=8)
    before = engine.generate([request], params)[0]
    engine.sync_weights(perturbed(model, 0.2, vision_only=True))
    try:
        fresh = engine.generate([request], params)[0]
        assert max(abs(a - b) for a, b in zip(fresh.logprobs, before.logprobs, strict=False)) > 1e-3
    finally:
        engine.sync_weights(model)
    assert engine.generate([request], params)[0] == before


def test_a_server_holding_other_weights_gets_the_trainers_again(setup, server, tmp_path):
    """As after a server restart: the server holds weights this trainer did not push (here another client's).
    The next call is refused (409), the client pushes its last weights file again and gets its own samples."""
    model, chat, engine = setup
    request, params = GenRequest(token_ids=prompt(chat, "Hello there"), key="r"), SamplingParams(max_new_tokens=12, seed=2)
    mine = engine.generate([request], params)[0]
    other = ServerEngine(ServerSettings(url=server.url), chat, max_images=4, weights_dir=tmp_path)
    other.sync_weights(perturbed(model))
    assert other.generate([request], params)[0] != mine
    version = engine.version
    assert engine.generate([request], params)[0] == mine
    assert json.loads(urllib.request.urlopen(f"{server.url}/info").read())["weights_version"] == version
    other.close()


def test_an_image_whose_pixels_changed_on_the_way_is_refused(setup, server, zoom_env):
    _, chat, engine = setup
    view = zoom_env.budget.view(zoom_env.load_tasks(n=1)[0].images[0].pil, "task")
    wire = encode_image(view).model_copy(update={"sha256": "0" * 64})
    call = GenerateCall(weights_version=None, params=SamplingParams(), images=[wire],
                        requests=[WireRequest(token_ids=[1, 2], images=[0])])
    req = urllib.request.Request(f"{server.url}/generate", data=call.model_dump_json().encode(),
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req)
    assert err.value.code == 400 and "decoded pixels differ" in err.value.read().decode()


def test_a_server_with_fewer_images_than_the_environment_is_refused_at_setup(setup, server):
    _, chat, _ = setup
    with pytest.raises(EngineServerError, match=r"accepts 4 images per context, the environment shows up to 6.*"
                                                r"rollout.server.max_images=6"):
        ServerEngine(ServerSettings(url=server.url), chat, max_images=6)
