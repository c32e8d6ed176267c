"""A small client for OpenAI-compatible chat completions (a vLLM server, a hosted API).

    client = ChatClient(ChatAPIConfig(base_url="http://127.0.0.1:8000/v1", model="Qwen2.5-VL-72B-Instruct"))
    reply = client.complete([user_message("Is the bag red?", images=[pil])], temperature=0.0)
    reply.text

Wire format: `POST {base_url}/chat/completions` with `{"model", "messages", ...}`, the answer in
`choices[0].message.content`. Images go as base64 PNG data URLs in `image_url` content parts.
The API key is read from the environment variable named by `api_key_env` when a request is made, so
configs, logs and stored runs only ever hold the variable's name.

Transport is httpx2 (httpx's API; already installed as a dependency of huggingface_hub). Time-outs,
connection errors, 429 and 5xx are retried with exponential backoff; other 4xx are not (the request
itself is wrong). Every failure is an `APIError` subclass, so callers catch one type.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any, Literal

import httpx2 as httpx
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent_grpo.errors import AgentGrpoError
from agent_grpo.images import png_bytes

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class APIError(AgentGrpoError):
    """A chat-completions request failed; the message names the endpoint and what happened."""


class APITimeoutError(APIError):
    """No (complete) answer within the time-out, after every retry."""


class APIConnectionError(APIError):
    """The server could not be reached (refused, reset, DNS), after every retry."""


class APIStatusError(APIError):
    """The server answered with an HTTP error status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class APIResponseError(APIError):
    """The server answered 200 with something that is not a chat completion (not JSON, no choices)."""


class ChatAPIConfig(BaseModel):
    """Where and how to call an OpenAI-compatible endpoint. Holds no secret: only the key's variable name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(description="e.g. http://127.0.0.1:8000/v1 (the path before /chat/completions)")
    model: str = Field(description="model name the server knows")
    api_key_env: str | None = Field(
        default=None, description="environment variable holding the API key; None: send no key (local vLLM)"
    )
    timeout_s: float = Field(
        default=60.0, gt=0, description="per attempt: to connect, and between bytes of the answer (httpx semantics)"
    )
    max_retries: int = Field(default=3, ge=0, description="extra attempts after a time-out, 429, 5xx or connection error")
    backoff_s: float = Field(default=1.0, ge=0, description="first wait between attempts; doubles each retry")
    max_backoff_s: float = Field(default=30.0, ge=0)

    def api_key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise APIError(f"environment variable {self.api_key_env} (api_key_env) is not set; export the API key there")
        return key

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


# ---- request -------------------------------------------------------------------------------------


class ImageURL(BaseModel):
    url: str


class TextContent(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ImageContent(BaseModel):
    type: Literal["image_url"] = "image_url"
    image_url: ImageURL


class ChatMessage(BaseModel):
    """One request message: text, or a list of text and image parts."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[TextContent | ImageContent]


def image_data_url(image: Image.Image) -> str:
    """`data:image/png;base64,...` of an image (converted to RGB, lossless)."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def user_message(text: str, images: Sequence[Image.Image] = ()) -> ChatMessage:
    """A user message with images first, then the text (the usual VLM prompt order)."""
    if not images:
        return ChatMessage(role="user", content=text)
    parts: list[TextContent | ImageContent] = [ImageContent(image_url=ImageURL(url=image_data_url(i))) for i in images]
    parts.append(TextContent(text=text))
    return ChatMessage(role="user", content=parts)


# ---- response ------------------------------------------------------------------------------------


class _Function(BaseModel):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ResponseToolCall(BaseModel):
    id: str | None = None
    type: str = "function"
    function: _Function


class ResponseMessage(BaseModel):
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[ResponseToolCall] | None = None


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: str | None = None


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatCompletion(BaseModel):
    """The part of a chat-completion response this project reads."""

    id: str | None = None
    model: str | None = None
    choices: list[Choice] = Field(min_length=1)
    usage: Usage | None = None

    @property
    def message(self) -> ResponseMessage:
        return self.choices[0].message

    @property
    def text(self) -> str:
        """The first choice's text ("" when the server sent only tool calls)."""
        return self.message.content or ""

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason


# ---- client --------------------------------------------------------------------------------------


class ChatClient:
    """Blocking chat-completions client; thread-safe (one pooled httpx client), usable as a context manager."""

    def __init__(self, config: ChatAPIConfig, transport: httpx.BaseTransport | None = None):
        self.config = config
        self._http = httpx.Client(timeout=config.timeout_s, transport=transport)
        self.requests_sent = 0  # attempts, retries included (for logs and tests)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def complete(self, messages: Sequence[ChatMessage], **params: Any) -> ChatCompletion:
        """One chat completion. `params` go into the request body as they are (temperature, max_tokens, seed...)."""
        body = {"model": self.config.model, "messages": [m.model_dump(exclude_none=True) for m in messages], **params}
        headers = {"Content-Type": "application/json"}
        key = self.config.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        cfg = self.config
        attempts = cfg.max_retries + 1
        for attempt in range(attempts):
            try:
                return self._attempt(body, headers)
            except (APITimeoutError, APIConnectionError) as e:
                error: APIError = e
            except APIStatusError as e:
                if e.status not in RETRY_STATUS:
                    raise
                error = e
            if attempt + 1 < attempts:
                wait = min(cfg.max_backoff_s, cfg.backoff_s * 2**attempt)
                logger.warning("%s (attempt %d of %d); retrying in %.1f s", error, attempt + 1, attempts, wait)
                time.sleep(wait)
        raise type(error)(f"{error} (gave up after {attempts} attempts)", *_status_args(error)) from error

    def _attempt(self, body: dict[str, Any], headers: dict[str, str]) -> ChatCompletion:
        url = self.config.url
        self.requests_sent += 1
        try:
            response = self._http.post(url, json=body, headers=headers)
        except httpx.TimeoutException as e:
            raise APITimeoutError(f"{url}: no answer within {self.config.timeout_s:g} s") from e
        except httpx.TransportError as e:  # refused, reset, closed mid-answer
            raise APIConnectionError(f"{url}: {type(e).__name__}: {e}") from e
        if response.status_code != 200:
            raise APIStatusError(
                f"{url}: HTTP {response.status_code}: {response.text[:300]!r}", response.status_code
            )
        try:
            data = json.loads(response.content)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIResponseError(f"{url}: the answer is not JSON: {response.content[:200]!r}") from e
        try:
            return ChatCompletion.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(root)"
            raise APIResponseError(
                f"{url}: the answer is not a chat completion ({where}: {first['msg']}): {str(data)[:200]!r}"
            ) from e


def _status_args(error: APIError) -> tuple:
    return (error.status,) if isinstance(error, APIStatusError) else ()
