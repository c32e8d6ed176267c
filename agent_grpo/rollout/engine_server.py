"""The generation server behind `agent-grpo serve-engine`: our `VLLMEngine` behind a small HTTP API.

Why our own server and not `vllm serve`: the engine inside is the very `VLLMEngine` the colocated
mode runs (raw logprobs at the sampling temperature, stops cut as HF cuts them, vision placeholders
suppressed, per-trajectory seeds, cache resets after a sync), so server mode samples exactly what
colocated mode samples; the wire (`server_protocol.py`) carries token ids, logprobs and lossless,
hash-checked images. `vllm serve`'s completions API would need its own stop handling and logprob
mode flags on every call and has no route that loads weights from our safetensors file and resets
the multimodal caches as one step.

Routes (JSON; models in `server_protocol.py`):
    GET  /info                 model, tokenizer facts, limits, the weights version held
    POST /generate             GenerateCall -> GenerateReply (409 if the weights version differs)
    POST /sync                 SyncCall: load a safetensors file of full weights, reset caches
    POST /weights/nccl/{init,start,update,finish}   vLLM's NCCL weight transfer (GPUs; untested here)

One engine call at a time (a lock): vLLM's offline engine is not re-entrant, and a sync must never
land in the middle of a generate call. `/info` does not wait for the lock.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from agent_grpo.rollout.engine import GenRequest
from agent_grpo.rollout.server_protocol import (
    STALE_WEIGHTS,
    GenerateCall,
    GenerateReply,
    NCCLCall,
    ServerInfo,
    SyncCall,
    SyncReply,
    decode_image,
)
from agent_grpo.rollout.server_weights import read_weights_file


class EngineService:
    """The server's state: one engine, the weights version it holds, the lock. Transport-free (tests call it)."""

    def __init__(self, engine, chat, model_name: str, max_model_len: int, max_images: int):
        self.engine = engine
        self.chat = chat
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.max_images = max_images
        self.version: str | None = None  # None: the weights the server started with, never pushed
        self.lock = threading.Lock()

    def info(self) -> ServerInfo:
        return ServerInfo(
            model=self.model_name, vocab_size=len(self.chat.tokenizer), image_token_id=self.chat.image_token_id,
            stop_strings=list(self.chat.stop_strings), max_model_len=self.max_model_len,
            max_images=self.max_images, weights_version=self.version,
        )

    def generate(self, call: GenerateCall) -> GenerateReply:
        images = [decode_image(w) for w in call.images]  # ValueError: a bad image (400)
        requests = []
        for r in call.requests:
            if any(not 0 <= i < len(images) for i in r.images):
                raise ValueError(f"request {r.key!r} points at an image outside the {len(images)} sent")
            requests.append(GenRequest(token_ids=r.token_ids, images=[images[i] for i in r.images],
                                       max_new_tokens=r.max_new_tokens, key=r.key, turn=r.turn))
        with self.lock:
            if call.weights_version is not None and call.weights_version != self.version:
                raise StaleWeights(call.weights_version, self.version)
            t0 = time.perf_counter()
            results = self.engine.generate(requests, call.params)
            return GenerateReply(weights_version=self.version, results=results, seconds=time.perf_counter() - t0)

    def sync_file(self, call: SyncCall) -> SyncReply:
        t0 = time.perf_counter()
        state = read_weights_file(call.path)  # read before the lock: generation goes on meanwhile
        with self.lock:
            self.engine.update_weights(state)  # VLLMEngine: reload_weights, then prefix + multimodal cache resets
            self.version = call.version
        return SyncReply(weights_version=call.version, seconds=time.perf_counter() - t0)

    # ---- NCCL (vLLM's weight-transfer engine; needs CUDA; NOT TESTED here) ----------------------

    def nccl(self, stage: str, call: NCCLCall) -> dict[str, Any]:
        llm = self.engine.llm
        if stage == "init":
            with self.lock:
                llm.collective_rpc(_attach_nccl_transfer)
                llm.collective_rpc("init_weight_transfer_engine", kwargs={"init_info": call.info})
        elif stage == "start":
            self.lock.acquire()  # held until "finish": no generate call sees half-loaded weights
            try:
                llm.collective_rpc("start_weight_update")
            except BaseException:
                self.lock.release()
                raise
        elif stage == "update":
            llm.collective_rpc("update_weights", kwargs={"update_info": call.info})
        elif stage == "finish":
            try:
                llm.collective_rpc("finish_weight_update")
                self.engine.reset_caches()
                self.version = call.version
            finally:
                self.lock.release()
        else:
            raise ValueError(f"unknown NCCL stage {stage!r}")
        return {"weights_version": self.version}


class StaleWeights(Exception):
    def __init__(self, expected: str, held: str | None):
        super().__init__(f"the call expects weights version {expected!r}, the server holds {held!r}")


def _attach_nccl_transfer(worker) -> None:
    """On each vLLM worker: create the NCCL weight-transfer engine that `weight_transfer_config` would have
    made at start-up (VLLMEngine does not pass one; this keeps its constructor as it is)."""
    if getattr(worker, "weight_transfer_engine", None) is not None:
        return
    from vllm.config.weight_transfer import WeightTransferConfig
    from vllm.distributed.weight_transfer import WeightTransferEngineFactory

    worker.weight_transfer_engine = WeightTransferEngineFactory.create_engine(
        WeightTransferConfig(backend="nccl"), worker.vllm_config, worker.device, worker.model_runner.get_model()
    )


def build_app(service: EngineService):
    """The FastAPI app over `service` (FastAPI and uvicorn come with vLLM)."""
    from fastapi import FastAPI, HTTPException

    app = FastAPI(title="agent-grpo engine server")

    # Plain `def` routes: FastAPI runs them in its thread pool, so /info answers while a batch generates.
    @app.get("/info")
    def info() -> ServerInfo:
        return service.info()

    @app.post("/generate")
    def generate(call: GenerateCall) -> GenerateReply:
        try:
            return service.generate(call)
        except StaleWeights as e:
            raise HTTPException(STALE_WEIGHTS, str(e)) from e
        except ValueError as e:
            raise HTTPException(400, str(e)) from e

    @app.post("/sync")
    def sync(call: SyncCall) -> SyncReply:
        try:
            return service.sync_file(call)
        except FileNotFoundError as e:
            raise HTTPException(400, f"no weights file at {call.path}: the server must see the trainer's "
                                     "rollout.server.weights_dir (a shared folder)") from e

    @app.post("/weights/nccl/{stage}")
    def nccl(stage: str, call: NCCLCall) -> dict:
        return service.nccl(stage, call)

    return app


def serve(service: EngineService, host: str, port: int) -> None:
    """Serve until interrupted (blocks)."""
    import uvicorn

    print(f"agent-grpo engine server: {service.model_name} on http://{host}:{port}", flush=True)
    uvicorn.run(build_app(service), host=host, port=port, log_level="warning")
