"""`python vllm_fault_fixtures.py train ARGS`: the real `agent-grpo` CLI with a fault injected into vLLM.

With `VLLM_FAULT_AT_STEP=k` (1-based), vLLM's own `LLM.generate` raises in the middle of step k's
rollout (its first call for a trajectory of that step), as a crashed engine core would: the error
comes from inside vLLM, below `VLLMEngine`, so the engine's error handling is what is tested.
(A uniquely named module: `conftest` names collide across test folders.)
"""

from __future__ import annotations

import os

FAULT_AT_STEP = "VLLM_FAULT_AT_STEP"
FAULT_MESSAGE = "injected engine fault"


def install_fault(step: int) -> None:
    from agent_grpo.rollout.vllm_engine import VLLMEngine

    generate = VLLMEngine.generate

    def generate_with_fault(self, requests, params):
        if any((r.key or "").startswith(f"s{step}-") for r in requests):

            def crash(*args, **kwargs):
                raise RuntimeError(FAULT_MESSAGE)

            self.llm.generate = crash
        return generate(self, requests, params)

    VLLMEngine.generate = generate_with_fault


if __name__ == "__main__":
    from agent_grpo.cli.main import app

    if os.environ.get(FAULT_AT_STEP):
        install_fault(int(os.environ[FAULT_AT_STEP]))
    app()
