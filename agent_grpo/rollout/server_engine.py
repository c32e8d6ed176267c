"""`ServerEngine`: the `Engine` the trainer uses when generation runs in its own process (`rollout.engine: vllm-server`).

The server is `agent-grpo serve-engine CONFIG` (`engine_server.py`), on other GPUs or another machine; this
client speaks `server_protocol.py` to it with the standard library only, so the trainer's environment needs
neither vLLM nor an HTTP package (the `nccl` weight transport does need vLLM).

Faults: a call that fails (connection refused or lost, no answer within `timeout_s`, a 5xx) is tried
again up to `retries` times, `retry_wait_s` apart. Retrying is exact: sampling is seeded per trajectory
and turn, so the same call returns the same tokens. A server that answers 409 (it holds other weights
than the trainer last pushed: it was restarted) first gets the last weights file again. When the tries
are spent the run stops with `EngineServerError`: nothing of the unfinished step has been stored, the
checkpoints of finished steps are untouched, and running the same command again resumes.
"""

from __future__ import annotations

import http.client
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import urlsplit

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent_grpo.errors import AgentGrpoError
from agent_grpo.images import image_sha256
from agent_grpo.rollout.engine import GenRequest, GenResult, SamplingParams
from agent_grpo.rollout.server_protocol import (
    PROTOCOL,
    STALE_WEIGHTS,
    GenerateCall,
    GenerateReply,
    NCCLCall,
    ServerInfo,
    SyncCall,
    SyncReply,
    WireImage,
    WireRequest,
    encode_image,
)
from agent_grpo.rollout.server_weights import write_weights_file

T = TypeVar("T", bound=BaseModel)


class EngineServerError(AgentGrpoError):
    """The generation server could not be reached, refused a call, or serves another model."""


class ServerSettings(BaseModel):
    """`rollout.server`: where the generation server is and how hard to try (`rollout.engine: vllm-server`)."""

    model_config = ConfigDict(frozen=True)

    url: str = Field(default="http://127.0.0.1:8765", description="the server's address; serve-engine binds to it")
    timeout_s: float = Field(default=600.0, gt=0, description="longest wait for one call (a generate call is a whole turn of a batch)")
    retries: int = Field(default=2, ge=0, description="tries after a failed call before the run stops; 0: stop at once")
    retry_wait_s: float = Field(default=5.0, ge=0, description="pause between tries")
    startup_timeout_s: float = Field(default=300.0, ge=0, description="at setup, how long to wait for the server to answer")
    weight_transport: Literal["file", "nccl"] = Field(
        default="file", description="file: safetensors in weights_dir (CPU, tested); nccl: vLLM's NCCL transfer (GPUs, untested)"
    )
    weights_dir: Path | None = Field(
        default=None, description="file transport: a folder trainer and server both see; None: <out_dir>/engine_weights "
                                  "(on one machine /dev/shm/NAME keeps it in shared memory)"
    )
    nccl_master_address: str = Field(default="127.0.0.1", description="nccl: this trainer's address, seen from the server")
    nccl_master_port: int = Field(default=29600, ge=1, le=65535)
    nccl_world_size: int = Field(default=2, ge=2, description="nccl: 1 (trainer) + the server's tensor-parallel size")
    max_images: int | None = Field(default=None, ge=1, description="serve-engine: images per context; None: the env's budget")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme != "http" or not parts.hostname or parts.port is None or parts.path not in ("", "/"):
            raise ValueError("must look like http://HOST:PORT (plain http, a port, no path)")
        return v.rstrip("/")

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname

    @property
    def port(self) -> int:
        return urlsplit(self.url).port


class _Transient(Exception):
    """A failure worth another try."""


class _Stale(Exception):
    """409: the server holds other weights than the trainer pushed last."""


class ServerEngine:
    """`Engine` over HTTP. Build it, `sync_weights(model)` once, and after every optimizer step."""

    def __init__(self, settings: ServerSettings, chat, max_images: int, weights_dir: str | Path | None = None,
                 image_cache_mb: float = 64, run_id: str | None = None, pushes: bool = True):
        """`run_id`: prefix of the weights versions (the same on every process of a run, so they agree on the
        version); `pushes`: False on all but one process of a run (they share one server and the same weights)."""
        self.settings = settings
        self.pushes = pushes
        self.chat = chat
        self.weights_dir = Path(weights_dir or settings.weights_dir or "engine_weights")
        self.version: str | None = None  # the weights version last pushed
        self._weights_file: Path | None = None
        self._run = run_id or uuid.uuid4().hex[:8]
        self._pushes = 0
        self._nccl = None
        self._model = None
        self._encoded: OrderedDict[str, WireImage] = OrderedDict()  # PNGs by pixel hash: images repeat every turn
        self._encoded_bytes, self._encoded_max = 0, int(image_cache_mb * 2**20)
        self.max_images = max_images
        self.info = self._wait_for_server()
        self._check(max_images)

    # ---- set-up --------------------------------------------------------------------------------

    def _wait_for_server(self) -> ServerInfo:
        deadline = time.monotonic() + self.settings.startup_timeout_s
        while True:
            try:
                return self._call("GET", "/info", None, ServerInfo, timeout=min(30.0, self.settings.timeout_s))
            except _Transient as e:
                if time.monotonic() >= deadline:
                    raise EngineServerError(
                        f"no engine server answers at {self.settings.url} ({e}; waited "
                        f"rollout.server.startup_timeout_s={self.settings.startup_timeout_s:g} s). Start it with "
                        "`agent-grpo serve-engine CONFIG` (the same config), or fix rollout.server.url"
                    ) from e
                time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))

    def _check(self, max_images: int) -> None:
        info, chat, url = self.info, self.chat, self.settings.url
        theirs, ours = (info.vocab_size, info.image_token_id, tuple(info.stop_strings)), (
            len(chat.tokenizer), chat.image_token_id, tuple(chat.stop_strings))
        if info.protocol != PROTOCOL:
            raise EngineServerError(f"the server at {url} speaks protocol {info.protocol}, this trainer {PROTOCOL}: "
                                    "run the same agent-grpo version on both sides")
        if theirs != ours:
            raise EngineServerError(
                f"the server at {url} serves another tokenizer or chat format (vocabulary, image token, stops: "
                f"{theirs} vs the trainer's {ours}); start it with the trainer's config (model.path {info.model!r} there)"
            )
        if info.max_images < max_images:
            raise EngineServerError(
                f"the server at {url} accepts {info.max_images} images per context, the environment shows up to "
                f"{max_images}; restart it with --set rollout.server.max_images={max_images} (or unset it)"
            )

    # ---- weights -------------------------------------------------------------------------------

    def sync_weights(self, model) -> None:
        """Push the model's full weights (LoRA merged, vision tower included); the server resets its caches."""
        from agent_grpo.rollout.vllm_engine import full_weights

        if not self.pushes:  # another process of the run pushed these weights
            self.version = self._new_version()
        elif self.settings.weight_transport == "nccl":
            self._push_nccl(model)
        else:
            self._push_file(full_weights(model))

    def update_weights(self, state_dict: dict) -> None:
        if not self.pushes:
            self.version = self._new_version()
        elif self.settings.weight_transport == "nccl":
            raise EngineServerError("the nccl weight transport sends a model: call sync_weights(model)")
        else:
            self._push_file(state_dict.items())

    def _new_version(self) -> str:
        self._pushes += 1
        return f"{self._run}-{self._pushes}"

    def _push_file(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        version = self._new_version()
        path = write_weights_file(tensors, self.weights_dir / f"weights-{version}.safetensors")
        self._retrying("weight sync", lambda: self._call("POST", "/sync", SyncCall(path=str(path.resolve()),
                                                                                   version=version), SyncReply))
        old, self._weights_file, self.version = self._weights_file, path, version
        if old is not None and old != path:
            old.unlink(missing_ok=True)  # the newest file stays: a restarted server gets it again

    def _push_nccl(self, model) -> None:  # UNTESTED (needs CUDA on both sides)
        from agent_grpo.rollout.server_weights import NCCLSender

        s = self.settings
        if self._nccl is None:
            self._nccl = NCCLSender(_NCCLRelay(self), s.nccl_master_address, s.nccl_master_port, s.nccl_world_size)
        self._nccl_version = self._new_version()
        self._nccl.send(model)
        self.version, self._model = self._nccl_version, model

    def _repush(self) -> None:
        """The server lost our weights (restarted): check it is still the same model, push the last weights again."""
        if not self.pushes:
            self._wait_for_push()
            return
        self.info = self._call("GET", "/info", None, ServerInfo)
        self._check(self.max_images)
        if self._weights_file is None:
            raise EngineServerError(
                f"the server at {self.settings.url} was restarted and holds other weights, and the nccl transport "
                "cannot send them again without a new process group; run the same command again to resume"
            )
        version = self.version
        self._call("POST", "/sync", SyncCall(path=str(self._weights_file.resolve()), version=version), SyncReply)

    def _wait_for_push(self) -> None:
        """A process that does not push: wait (up to timeout_s) until the pushing process's weights are there."""
        deadline = time.monotonic() + self.settings.timeout_s
        while time.monotonic() < deadline:
            if self._call("GET", "/info", None, ServerInfo).weights_version == self.version:
                return
            time.sleep(0.5)
        raise _Transient(f"the server still holds other weights than version {self.version} after "
                         f"{self.settings.timeout_s:g} s (pushed by the run's main process)")

    # ---- generate ------------------------------------------------------------------------------

    def generate(self, requests: list[GenRequest], params: SamplingParams) -> list[GenResult]:
        if not requests:
            return []
        images: list[WireImage] = []
        index: dict[str, int] = {}
        wire = []
        for r in requests:
            where = []
            for img in r.images:
                key = image_sha256(img)
                if key not in index:
                    index[key] = len(images)
                    images.append(self._encode(key, img))
                where.append(index[key])
            wire.append(WireRequest(token_ids=r.token_ids, images=where, max_new_tokens=r.max_new_tokens,
                                    key=r.key, turn=r.turn))
        call = GenerateCall(weights_version=self.version, params=params, images=images, requests=wire)
        reply = self._retrying("generate", lambda: self._call("POST", "/generate", call, GenerateReply))
        if len(reply.results) != len(requests):
            raise EngineServerError(f"the server answered {len(reply.results)} results for {len(requests)} requests")
        return reply.results

    def _encode(self, key: str, img) -> WireImage:
        if key in self._encoded:
            self._encoded.move_to_end(key)
            return self._encoded[key]
        wire = encode_image(img)
        if self._encoded_max > 0:
            self._encoded[key] = wire
            self._encoded_bytes += len(wire.png_b64)
            while self._encoded_bytes > self._encoded_max and self._encoded:
                _, gone = self._encoded.popitem(last=False)
                self._encoded_bytes -= len(gone.png_b64)
        return wire

    # ---- HTTP ----------------------------------------------------------------------------------

    def _retrying(self, what: str, fn: Callable[[], T]) -> T:
        s = self.settings
        failures: list[str] = []
        for attempt in range(s.retries + 1):
            if attempt:
                time.sleep(s.retry_wait_s)
            try:
                return fn()
            except _Stale as e:
                failures.append(str(e))
                try:
                    self._repush()
                    return fn()
                except (_Transient, _Stale) as again:
                    failures.append(str(again))
            except _Transient as e:
                failures.append(str(e))
        tries = s.retries + 1
        raise EngineServerError(
            f"the engine server at {s.url} failed the {what} call {tries} time(s) (rollout.server.retries={s.retries}, "
            f"timeout_s={s.timeout_s:g}); last: {failures[-1]}. The run stopped: nothing of the unfinished step is "
            "stored, the checkpoints and trajectories of finished steps are intact. Restart the server "
            "(agent-grpo serve-engine CONFIG) and run the same train command to resume from the last checkpoint"
        )

    def _call(self, method: str, path: str, body: BaseModel | None, reply: type[T], timeout: float | None = None) -> T:
        s = self.settings
        timeout = s.timeout_s if timeout is None else timeout
        data = body.model_dump_json().encode() if body is not None else None
        conn = http.client.HTTPConnection(s.host, s.port, timeout=timeout)
        try:
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            status, payload = resp.status, resp.read()
        except TimeoutError as e:
            raise _Transient(f"no answer to {path} within {timeout:g} s") from e
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            raise _Transient(f"{path}: {type(e).__name__}: {e}") from e
        finally:
            conn.close()
        if status == 200:
            return reply.model_validate_json(payload)
        detail = _detail(payload)
        if status == STALE_WEIGHTS:
            raise _Stale(f"{path}: {detail}")
        if status >= 500:
            raise _Transient(f"{path}: server error {status}: {detail}")
        raise EngineServerError(f"the engine server at {s.url} refused {path} ({status}): {detail}")

    def close(self) -> None:
        if self._nccl is not None:
            self._nccl.close()
            self._nccl = None
        if self._weights_file is not None:
            self._weights_file.unlink(missing_ok=True)
            self._weights_file = None


class _NCCLRelay:
    """vLLM's `VLLMWeightSyncClient` methods, relayed to our server's `/weights/nccl/...` (UNTESTED)."""

    def __init__(self, engine: ServerEngine):
        self.engine = engine

    def _post(self, stage: str, call: NCCLCall) -> None:
        self.engine._call("POST", f"/weights/nccl/{stage}", call, _Any)

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        self._post("init", NCCLCall(info=init_info))

    def start_weight_update(self) -> None:
        self._post("start", NCCLCall())

    def update_weights(self, update_info) -> None:
        self._post("update", NCCLCall(info=update_info))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._post("finish", NCCLCall(version=self.engine._nccl_version))


class _Any(BaseModel):
    model_config = ConfigDict(extra="allow")


def _detail(payload: bytes) -> str:
    try:
        return str(json.loads(payload).get("detail", payload[:500]))
    except (ValueError, AttributeError):
        return payload[:500].decode("utf-8", "replace")
