"""Every extension point of agent-grpo, and how plugins are discovered.

Plugins are ordinary packages that declare entry points; the built-in tools (`tools/`) and
environments (`envs/`) are installed and found exactly the same way.

Set `AGENT_GRPO_PLUGINS=name1,name2` to load only the named entry points (of any group).
"""

from __future__ import annotations

import os
from importlib.metadata import EntryPoint, entry_points

from agent_grpo.errors import PluginError

TOOLS_GROUP = "agent_grpo.tools"
"""A `Tool` (or a zero-argument callable returning a Tool or a list of them)."""

ENVS_GROUP = "agent_grpo.envs"
"""An `Environment` subclass (or a zero-argument factory returning an Environment)."""

DEMOS_GROUP = "agent_grpo.demos"
"""A demo pipeline for `agent-grpo demo`: the path of its YAML (a `PipelineConfig`), or a zero-argument callable
returning it. The entry point named `default` is what `agent-grpo demo` runs without `--demo`/`--config`."""

COMMANDS_GROUP = "agent_grpo.commands"
"""A `typer.Typer` app (or a zero-argument callable returning one): a command group of a plugin package,
added to the command line under the entry point's name (`agent-grpo NAME ...`)."""

GROUPS = {TOOLS_GROUP: "image tools the model can call", ENVS_GROUP: "task environments",
          DEMOS_GROUP: "demo pipelines (`agent-grpo demo`)", COMMANDS_GROUP: "command groups of plugin packages"}


def iter_entry_points(group: str) -> list[EntryPoint]:
    """Installed entry points of a group, filtered by AGENT_GRPO_PLUGINS, sorted by name."""
    selected = os.environ.get("AGENT_GRPO_PLUGINS")
    allowed = {n.strip() for n in selected.split(",")} if selected else None
    eps = [ep for ep in entry_points(group=group) if allowed is None or ep.name in allowed]
    return sorted(eps, key=lambda ep: ep.name)


def load_entry_point(ep: EntryPoint) -> object:
    try:
        return ep.load()
    except Exception as e:  # a broken plugin must say which one it is
        dist = ep.dist.name if ep.dist else "?"
        raise PluginError(f"plugin {ep.name!r} ({ep.value}, package {dist}) failed to load: {e}") from e


def distribution_of(ep: EntryPoint) -> str:
    return ep.dist.name if ep.dist else "?"
