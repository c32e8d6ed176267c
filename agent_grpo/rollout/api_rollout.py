"""Multi-turn episodes with a chat API model (any OpenAI-compatible endpoint): a baseline for `eval`.

The environment is the same (`start`, `step`, tools, budget, rubric); only the policy differs. Each turn
the conversation so far goes to the server as chat messages: images as base64 PNG data URLs of the
model's *view* (resized to the environment's visual budget, as our own models see them), tool results as
a user turn of `<tool_response>` blocks with their images (our chat template's layout; a `tool` role
message cannot carry images in the OpenAI format), the tools described in the system message in the
Hermes/Qwen `<tool_call>` protocol. The reply's text goes to `Environment.step` exactly as sampled text
would; structured `tool_calls` (a server with tool parsing on) are written back as `<tool_call>` blocks.

These trajectories are text only: no token ids, no logprobs, no segments. They are for evaluation and
inspection (replay works); they cannot be trained on. A request that fails after the client's retries
ends that trajectory with termination `error` and metric `api_error` = 1; the others go on.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pydantic import BaseModel, Field

from agent_grpo.api_client import (
    APIError,
    ChatClient,
    ChatCompletion,
    ChatMessage,
    ImageContent,
    ImageURL,
    TextContent,
    image_data_url,
)
from agent_grpo.content import ImagePart, Message, TextPart
from agent_grpo.envs.api import Environment, Episode
from agent_grpo.trajectory import Task, Termination, Trajectory

logger = logging.getLogger(__name__)


class APIRolloutConfig(BaseModel):
    group_size: int = Field(default=1, ge=1, description="trajectories per task (k)")
    temperature: float = Field(default=0.0, ge=0.0, description="0: greedy")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(default=512, ge=1, description="per turn")
    workers: int = Field(default=4, ge=1, description="requests in flight at once")
    seed: int = 0


def tools_system_text(schemas: list[dict]) -> str:
    """The tools section our chat template puts in the system turn (chat_template.jinja), as plain text."""
    lines = "\n".join(json.dumps(s, ensure_ascii=False) for s in schemas)
    return (
        "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        f"You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{lines}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
        "</tool_call>"
    )


def to_api_messages(messages: list[Message], env: Environment, urls: dict | None = None) -> list[ChatMessage]:
    """Our conversation as OpenAI chat messages (see the module docstring for the layout).

    `urls` caches each image's data URL by content hash and source: every turn resends the images before it."""
    urls = {} if urls is None else urls
    schemas = [t.json_schema() for t in env.tools]
    out: list[ChatMessage] = []
    for i, m in enumerate(messages):
        if m.role == "tool":
            parts = [TextContent(text="\n<tool_response>\n"), *_parts(m, env, urls), TextContent(text="\n</tool_response>")]
            if i > 0 and messages[i - 1].role == "tool":  # consecutive results share one user turn
                out[-1].content.extend(parts)
            else:
                out.append(ChatMessage(role="user", content=parts))
        elif m.role == "system":
            out.append(ChatMessage(role="system", content=m.text_content + (tools_system_text(schemas) if schemas else "")))
        elif m.role == "assistant":
            out.append(ChatMessage(role="assistant", content=m.text_content))
        else:
            out.append(ChatMessage(role=m.role, content=_parts(m, env, urls)))
    if schemas and not any(m.role == "system" for m in messages):
        out.insert(0, ChatMessage(role="system", content="You are a helpful assistant." + tools_system_text(schemas)))
    return out


def _parts(m: Message, env: Environment, urls: dict) -> list[TextContent | ImageContent]:
    parts: list[TextContent | ImageContent] = []
    for p in m.content:
        if isinstance(p, TextPart):
            parts.append(TextContent(text=p.text))
        else:
            parts.append(ImageContent(image_url=ImageURL(url=_view_url(p, env, urls))))
    return parts


def _view_url(part: ImagePart, env: Environment, urls: dict) -> str:
    key = (part.sha256, part.source)
    if key not in urls:
        urls[key] = image_data_url(env.budget.view(part.pil, part.source))
    return urls[key]


def reply_text(completion: ChatCompletion) -> str:
    """The reply as the environment reads it: the text, then any structured tool calls as <tool_call> blocks."""
    text = completion.text
    for call in completion.message.tool_calls or []:
        args = call.function.arguments
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass  # left as the model wrote it: the environment's parser reports it as a bad call
        body = json.dumps({"name": call.function.name, "arguments": args}, ensure_ascii=False)
        text += f"\n<tool_call>\n{body}\n</tool_call>"
    return text


@dataclass
class _Live:
    episode: Episode
    gen_s: float = 0.0
    env_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def api_rollout(
    env: Environment, client: ChatClient, tasks: list[Task], config: APIRolloutConfig | None = None,
    tag: str = "api-",
) -> list[Trajectory]:
    """`group_size` text-only trajectories per task, scored per group. Turn by turn, requests in parallel."""
    cfg = config or APIRolloutConfig()
    lives: list[_Live] = []
    for task in tasks:
        group_id = f"{tag}{task.id}"
        for k in range(cfg.group_size):
            ep = env.start(task, group_id=group_id, sample_index=k, trajectory_id=f"{group_id}-{k}")
            lives.append(_Live(episode=ep))
    turn = 0
    urls: dict = {}  # data URLs of the images seen in this rollout
    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        while active := [lv for lv in lives if not lv.episode.done]:
            params = dict(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)
            jobs = [
                pool.submit(_request, client, to_api_messages(lv.episode.trajectory.messages, env, urls),
                            {**params, "seed": cfg.seed * 100_003 + turn * 1_009 + i})
                for i, lv in enumerate(active)
            ]
            for lv, job in zip(active, jobs, strict=True):
                completion, seconds = job.result()
                lv.gen_s += seconds
                traj = lv.episode.trajectory
                if isinstance(completion, APIError):
                    logger.warning("trajectory %s: %s", traj.id, completion)
                    traj.metrics["api_error"] = 1.0
                    env.stop(lv.episode, Termination.ERROR)
                    continue
                if completion.usage is not None:
                    lv.prompt_tokens += completion.usage.prompt_tokens
                    lv.completion_tokens += completion.usage.completion_tokens
                t0 = time.perf_counter()
                env.step(lv.episode, reply_text(completion), truncated=completion.finish_reason == "length")
                lv.env_s += time.perf_counter() - t0
            turn += 1
    trajectories = []
    for lv in lives:
        traj = env.finish(lv.episode)
        traj.metrics.update(
            api_prompt_tokens=float(lv.prompt_tokens), api_completion_tokens=float(lv.completion_tokens),
            time_generation_s=lv.gen_s, time_env_s=lv.env_s,
        )
        env.close(lv.episode)
        trajectories.append(traj)
    for start in range(0, len(trajectories), cfg.group_size):
        env.score_group(trajectories[start : start + cfg.group_size])
    return trajectories


def _request(client: ChatClient, messages: list[ChatMessage], params: dict) -> tuple[ChatCompletion | APIError, float]:
    t0 = time.perf_counter()
    try:
        result: ChatCompletion | APIError = client.complete(messages, **params)
    except APIError as e:
        result = e
    return result, time.perf_counter() - t0
