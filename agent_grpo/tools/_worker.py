"""The tool worker process: runs tool calls sent by `agent_grpo.tools.isolation.ToolWorkers`.

Started as `python -c "...; main(FD)"` with one end of a socket pair. Requests come from
the trusted parent (pickled: the tool's import path, the call's arguments, its `ToolContext`); replies
go back as plain data (a JSON header and raw RGB bytes, never pickle), so nothing a tool does in here
can run code in the parent. Every failure, `SystemExit` and `KeyboardInterrupt` included, is a reply.
"""

from __future__ import annotations

import importlib
import json
import pickle
import signal
import struct
from multiprocessing.connection import Connection
from typing import Any

from PIL import Image

_HEADER = struct.Struct(">I")


def resolve(ref: tuple[str, str]):
    """The function of the tool at `module:qualname` (the `@tool` object there, or the plain function)."""
    from agent_grpo.tools.api import Tool

    module, qualname = ref
    obj: Any = importlib.import_module(module)
    for name in qualname.split("."):
        obj = getattr(obj, name)
    return obj.fn if isinstance(obj, Tool) else obj


def encode_reply(header: dict[str, Any], images: list[Image.Image] = ()) -> bytes:
    """One message: header length, JSON header (with each image's mode and size), raw image bytes."""
    blobs = [im.tobytes() for im in images]
    header = {**header, "images": [[im.mode, im.width, im.height, len(b)] for im, b in zip(images, blobs, strict=True)]}
    head = json.dumps(header).encode()
    return _HEADER.pack(len(head)) + head + b"".join(blobs)


def decode_reply(data: bytes) -> tuple[dict[str, Any], list[Image.Image]]:
    """Inverse of `encode_reply`; raises ValueError on a malformed message."""
    (n,) = _HEADER.unpack_from(data)
    header = json.loads(data[_HEADER.size : _HEADER.size + n])
    pos = _HEADER.size + n
    images = []
    for mode, width, height, size in header.pop("images"):
        if mode != "RGB" or size != width * height * 3:
            raise ValueError(f"malformed image in a tool reply: {mode} {width}x{height}, {size} bytes")
        images.append(Image.frombytes("RGB", (width, height), data[pos : pos + size]))
        pos += size
    if pos != len(data):
        raise ValueError("trailing bytes in a tool reply")
    return header, images


_images: dict[str, Image.Image] = {}  # sha256 -> pixels, as the parent says (it mirrors this cache)


def _context(request: dict[str, Any]):
    """The call's ToolContext, its images' pixels taken from this worker's cache."""
    from dataclasses import replace

    for sha in request["evict"]:
        _images.pop(sha, None)
    for sha, (mode, size, data) in request["pixels"].items():
        _images[sha] = Image.frombytes(mode, size, data)
    parts = []
    for part in request["images"]:
        part._pil = _images[part.sha256]
        parts.append(part)
    return replace(request["context"], images=parts)


def _run(request: dict[str, Any]) -> bytes:
    from agent_grpo.errors import ToolError
    from agent_grpo.tools.api import check_output

    name = request["name"]
    ctx = _context(request)
    try:
        fn = resolve(request["ref"])
        args = request["arguments_type"].model_validate(request["arguments"])
        output = check_output(fn(args, ctx), name, len(ctx.images))
        state = json.loads(json.dumps(ctx.state))  # state must be plain data to come back
    except ToolError as e:
        return encode_reply({"error": str(e), "kind": e.kind})
    except BaseException as e:  # noqa: BLE001 - SystemExit and KeyboardInterrupt are tool errors too
        return encode_reply({"error": f"{name} failed: {type(e).__name__}: {e}", "kind": "exception"})
    meta = [{"parent": o.parent, "box": None if o.box is None else o.box.model_dump()} for o in output.images]
    header = {"text": output.text, "metrics": output.metrics, "meta": meta, "state": state}
    return encode_reply(header, [o.image for o in output.images])


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when its parent dies, even while a tool hangs (best effort).

    Linux ties the signal to the parent *thread*: only asked for when the main thread started the worker.
    Otherwise the parent's exit handler kills it, and an idle worker exits when its socket closes.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(fd: int, from_main_thread: int = 0) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if from_main_thread:
        _die_with_parent()
    conn = Connection(fd)
    try:
        import agent_grpo.tools.api  # noqa: F401  (the imports every call needs, before saying ready)

        for ref in pickle.loads(conn.recv_bytes()):
            try:
                resolve(ref)
            except Exception:  # reported when the tool is called
                pass
    except BaseException as e:  # noqa: BLE001
        conn.send_bytes(encode_reply({"boot_error": f"{type(e).__name__}: {e}"}))
        return
    conn.send_bytes(encode_reply({"ready": True}))
    while True:
        try:
            request = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        conn.send_bytes(_run(request))


