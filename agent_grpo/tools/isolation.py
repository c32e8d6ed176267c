"""Tool calls in worker processes: one stuck call costs at most its own time-out.

A thread cannot be stopped, so a hung tool used to keep its pool thread (four hung calls filled the
pool), a tool holding the GIL blocked everything past its limit, and the process never exited. Here
each call runs in a small pool of persistent worker processes (`agent_grpo.tools._worker` in
a fresh interpreter: no fork of a threaded trainer). A call's clock starts when a ready worker takes
it, not while it queues; at its limit the worker is killed (SIGKILL) and replaced, and the call comes
back as a time-out. Workers die with the parent (atexit, and Linux's parent-death signal).

A tool runs in a worker when its function can be imported by name (`module:qualname`, as every
installed plugin can). A tool defined inside a function cannot be, and runs in-process on a daemon
thread of its own: time-outs still hold and nothing queues behind it, but a GIL-holding or stuck
thread cannot be cut. Define tools at module level.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from typing import Any

from agent_grpo.boxes import Box
from agent_grpo.tools._worker import decode_reply, resolve
from agent_grpo.tools.api import Tool, ToolContext, ToolImage, ToolOutput

log = logging.getLogger(__name__)

BOOT_TIMEOUT_S = 120.0  # a worker that is not ready by then fails the calls waiting for it
CACHED_IMAGES = 32  # images a worker keeps between calls, so a trajectory's images cross once

_ALL: weakref.WeakSet[ToolWorkers] = weakref.WeakSet()


@dataclass
class Reply:
    """What came back for one call: an output and the tool's new state, or an error (kind, message)."""

    output: ToolOutput | None = None
    state: dict[str, Any] | None = None
    error: str | None = None
    kind: str | None = None
    duration_s: float = 0.0


@dataclass
class _Call:
    index: int
    tool: Tool
    arguments: dict[str, Any]
    context: ToolContext
    limit_s: float


@dataclass
class _Worker:
    proc: subprocess.Popen
    conn: Connection
    ready: bool = False
    started: float = field(default_factory=time.perf_counter)
    call: _Call | None = None
    call_start: float = 0.0
    cached: dict[str, None] = field(default_factory=dict)  # sha256 of the images it holds, oldest first
    owner: object | None = None  # the `run` call using it; workers are never shared between two at once

    def kill(self) -> None:
        try:  # the whole process group: whatever the tool started goes too
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.conn.close()


def tool_ref(tool: Tool) -> tuple[str, str] | None:
    """`(module, qualname)` that imports `tool` in a fresh interpreter, or None if there is none."""
    fn = tool.fn
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<locals>" in qualname or "<lambda>" in qualname:
        return None
    try:
        found = resolve((module, qualname))
    except Exception:  # noqa: BLE001 - anything: not importable by name
        return None
    return (module, qualname) if found is fn else None


class ToolWorkers:
    """A pool of tool worker processes, started on demand (at most `max_workers`).

    `isolate=False` runs every call in-process on its own thread (no isolation): for debugging a tool
    with a debugger, or a test that patches a tool module's globals.
    """

    def __init__(self, max_workers: int = 4, isolate: bool = True):
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self.max_workers = max_workers
        self.isolate = isolate
        self._workers: list[_Worker] = []
        self._refs: dict[Any, tuple[str, str] | None] = {}  # tool function -> import path (None: in-process)
        # Several `run` calls may be in flight (trajectories whose turns came back at different times, each
        # from its own thread): each claims free workers under this lock and talks only to its own.
        self._lock = threading.Condition()
        _ALL.add(self)

    # ---- public ----------------------------------------------------------------------------------

    def isolated(self, tool: Tool) -> bool:
        if not self.isolate:
            return False
        if tool.fn not in self._refs:
            ref = tool_ref(tool)
            if ref is None:
                log.warning("tool %s is defined where a worker cannot import it; it runs in-process, "
                            "where a stuck call cannot be cut (define it at module level)", tool.name)
            self._refs[tool.fn] = ref
        return self._refs[tool.fn] is not None

    def run(self, calls: list[tuple[Tool, dict[str, Any], ToolContext, float]]) -> list[Reply]:
        """Run calls (tool, raw arguments, context, time limit) concurrently; replies in call order."""
        replies: list[Reply | None] = [None] * len(calls)
        pending = deque(_Call(i, t, a, c, lim) for i, (t, a, c, lim) in enumerate(calls))
        threaded = [c for c in pending if not self.isolated(c.tool)]
        pending = deque(c for c in pending if self.isolated(c.tool))
        threads = [_ThreadCall(c) for c in threaded]
        self._run_isolated(pending, replies)
        for t in threads:
            replies[t.call.index] = t.result()
        return replies  # type: ignore[return-value]

    def close(self) -> None:
        with self._lock:
            workers, self._workers = self._workers, []
        for w in workers:
            w.kill()

    def __del__(self):  # pragma: no cover - best effort; atexit covers interpreter exit
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    # ---- internals -------------------------------------------------------------------------------

    def _run_isolated(self, pending: deque[_Call], replies: list[Reply | None]) -> None:
        me = object()
        mine: list[_Worker] = []  # the workers this call has claimed
        try:
            while pending or any(w.call for w in mine):
                if pending and not self._claim(me, mine, len(pending)):
                    continue  # every worker is busy with other calls: waited for one to be released
                for w in mine:
                    if pending and w.ready and w.call is None:
                        self._dispatch(w, pending.popleft(), replies)
                now = time.perf_counter()
                deadlines = [w.call_start + w.call.limit_s for w in mine if w.call]
                deadlines += [w.started + BOOT_TIMEOUT_S for w in mine if not w.ready]
                if not deadlines:
                    continue
                for conn in wait([w.conn for w in mine], timeout=max(0.0, min(deadlines) - now)):
                    w = next(w for w in mine if w.conn is conn)
                    self._receive(w, pending, replies)
                    if w not in self._workers:
                        mine.remove(w)
                now = time.perf_counter()
                for w in list(mine):
                    if w.call is not None and now - w.call_start >= w.call.limit_s:
                        call = w.call
                        replies[call.index] = Reply(
                            error=f"{call.tool.name} timed out after {call.limit_s:g} s", kind="timeout",
                            duration_s=call.limit_s,
                        )
                        self._retire(w)
                        mine.remove(w)
                    elif not w.ready and now - w.started >= BOOT_TIMEOUT_S:
                        self._retire(w)
                        mine.remove(w)
                        self._fail_all(pending, replies, f"a tool worker did not start within {BOOT_TIMEOUT_S:g} s")
                self._release(mine, keep=len(pending))
        finally:
            self._release(mine, keep=0)

    def _claim(self, me: object, mine: list[_Worker], calls: int) -> bool:
        """Claim free workers (or start new ones) for up to `calls` waiting calls; False if none could be had."""
        with self._lock:
            need = calls - sum(1 for w in mine if w.call is None)
            for w in self._workers:
                if need <= 0:
                    break
                if w.owner is None:
                    w.owner = me
                    mine.append(w)
                    need -= 1
            while need > 0 and len(self._workers) < self.max_workers:
                w = self._spawn()
                w.owner = me
                mine.append(w)
                need -= 1
            if not mine:
                self._lock.wait(timeout=0.1)  # woken when another call releases a worker
            return bool(mine)

    def _release(self, mine: list[_Worker], keep: int) -> None:
        """Hand back idle workers beyond the `keep` this call still needs, for other calls to claim."""
        idle = [w for w in mine if w.call is None and (w.ready or keep == 0)]
        spare = idle[keep:]
        if not spare:
            return
        with self._lock:
            for w in spare:
                w.owner = None
                mine.remove(w)
            self._lock.notify_all()

    def _dispatch(self, w: _Worker, call: _Call, replies: list[Reply | None]) -> None:
        # Pixels travel once per worker (raw RGB bytes); the context goes without them.
        needed = {img.sha256: img for img in call.context.images}
        new = {sha: (img.pil.mode, img.pil.size, img.pil.tobytes()) for sha, img in needed.items() if sha not in w.cached}
        old = [sha for sha in w.cached if sha not in needed]
        evict = old[: max(0, len(w.cached) + len(new) - CACHED_IMAGES)]
        for sha in evict:
            del w.cached[sha]
        w.cached.update(dict.fromkeys(new))
        request = {
            "ref": self._refs[call.tool.fn], "name": call.tool.name, "arguments": call.arguments,
            "arguments_type": call.tool.arguments, "context": replace(call.context, images=[]),
            "images": [img.model_copy(update={}) for img in call.context.images], "pixels": new, "evict": evict,
        }
        for img in request["images"]:
            img._pil = img._load = None  # pixels go separately; a lazy part's loader may not pickle
        try:
            data = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - e.g. a context holding something unpicklable
            replies[call.index] = Reply(error=f"{call.tool.name} could not be sent to a worker: {e}", kind="exception")
            return
        w.call, w.call_start = call, time.perf_counter()
        try:
            w.conn.send_bytes(data)
        except OSError:
            replies[call.index] = Reply(error=f"{call.tool.name} failed: its worker process died", kind="exception")
            self._retire(w)

    def _receive(self, w: _Worker, pending: deque[_Call], replies: list[Reply | None]) -> None:
        call = w.call
        try:
            header, images = decode_reply(w.conn.recv_bytes())
        except (EOFError, OSError, ValueError) as e:
            code = w.proc.poll()
            self._retire(w)
            if call is not None:
                replies[call.index] = Reply(
                    error=f"{call.tool.name} failed: its worker process died (exit code {code})", kind="exception",
                    duration_s=time.perf_counter() - w.call_start,
                )
            elif not any(x.ready for x in self._workers):
                self._fail_all(pending, replies, f"a tool worker died while starting: {e}")
            return
        if "boot_error" in header:
            self._retire(w)
            self._fail_all(pending, replies, f"a tool worker could not start: {header['boot_error']}")
            return
        if "ready" in header:
            w.ready = True
            return
        w.call = None
        duration = time.perf_counter() - w.call_start
        if call is None:
            return
        if "error" in header:
            replies[call.index] = Reply(error=header["error"], kind=header["kind"], duration_s=duration)
            return
        try:
            outs = [
                ToolImage(image=im, parent=m["parent"], box=None if m["box"] is None else Box(**m["box"]))
                for im, m in zip(images, header["meta"], strict=True)
            ]
            output = ToolOutput(text=header["text"], images=outs, metrics=header["metrics"])
        except (KeyError, TypeError, ValueError) as e:  # pydantic's ValidationError is a ValueError
            replies[call.index] = Reply(error=f"{call.tool.name} returned a malformed result: {e}", kind="exception",
                                        duration_s=duration)
            return
        replies[call.index] = Reply(output=output, state=header["state"], duration_s=duration)

    def _spawn(self) -> _Worker:
        parent, child = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from agent_grpo.tools._worker import main; main(*map(int, sys.argv[1:]))",
             str(child.fileno()), str(int(threading.current_thread() is threading.main_thread()))],
            pass_fds=(child.fileno(),), env=env, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        child.close()
        conn = Connection(parent.detach())
        conn.send_bytes(pickle.dumps([r for r in self._refs.values() if r is not None]))
        worker = _Worker(proc=proc, conn=conn)
        self._workers.append(worker)
        return worker

    def _retire(self, w: _Worker) -> None:
        w.kill()
        with self._lock:
            if w in self._workers:
                self._workers.remove(w)
            self._lock.notify_all()  # room to start a replacement

    def _fail_all(self, pending: deque[_Call], replies: list[Reply | None], reason: str) -> None:
        while pending:
            call = pending.popleft()
            replies[call.index] = Reply(error=f"{call.tool.name} could not run: {reason}", kind="exception")


class _ThreadCall:
    """The in-process path: one daemon thread per call, so nothing queues behind a stuck one."""

    def __init__(self, call: _Call):
        self.call = call
        self._reply: Reply | None = None
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"agent-grpo-tool-{call.tool.name}")
        self._thread.start()

    def _run(self) -> None:
        from agent_grpo.errors import ToolError
        from agent_grpo.tools.api import check_output

        call = self.call
        try:
            args = call.tool.arguments.model_validate(call.arguments)
            output = check_output(call.tool.fn(args, call.context), call.tool.name, len(call.context.images))
            self._reply = Reply(output=output, state=call.context.state)
        except ToolError as e:
            self._reply = Reply(error=str(e), kind=e.kind)
        except BaseException as e:  # noqa: BLE001 - SystemExit and KeyboardInterrupt are tool errors too
            self._reply = Reply(error=f"{call.tool.name} failed: {type(e).__name__}: {e}", kind="exception")
        if self._reply is not None:
            self._reply.duration_s = time.perf_counter() - self._start

    def result(self) -> Reply:
        self._thread.join(max(0.0, self.call.limit_s - (time.perf_counter() - self._start)))
        if self._thread.is_alive() or self._reply is None:
            return Reply(error=f"{self.call.tool.name} timed out after {self.call.limit_s:g} s", kind="timeout",
                         duration_s=self.call.limit_s)
        return self._reply


@atexit.register
def _close_all() -> None:
    for pool in list(_ALL):
        pool.close()
