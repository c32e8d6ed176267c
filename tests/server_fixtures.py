"""Start `agent-grpo serve-engine` as a real process on 127.0.0.1 (a free port) for the server-mode tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# What every test server serves: the tiny model (the trainer pushes its weights), short contexts.
BASE = ["rollout.max_total_tokens=1024", "rollout.vllm.cpu_kvcache_gib=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, settings: list[str], log: Path, port: int | None = None, start_timeout_s: float = 900):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        args = [sys.executable, "-m", "agent_grpo.cli.main", "serve-engine", "--set", f"rollout.server.url={self.url}"]
        for s in [*BASE, *settings]:
            args += ["--set", s]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + start_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve-engine exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                urllib.request.urlopen(f"{self.url}/info", timeout=5).read()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"serve-engine did not answer in {start_timeout_s} s:\n{self.tail()}") from None
                time.sleep(1)

    def tail(self, n: int = 4000) -> str:
        self._log.flush()
        return self.log.read_text()[-n:]

    def kill(self) -> None:
        """As a crash would: SIGKILL, no clean-up."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
