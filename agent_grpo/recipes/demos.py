"""Demo pipelines shipped by plugin packages (entry-point group `agent_grpo.demos`).

An environment package that wants `agent-grpo demo --demo NAME` to run its pipeline declares

    [project.entry-points."agent_grpo.demos"]
    NAME = "my_package:DEMO_YAML"      # a path to a PipelineConfig YAML, or a callable returning one

The entry point named `default` is the README's main job. The framework itself names no demo.
"""

from __future__ import annotations

from pathlib import Path

from agent_grpo.errors import PluginError
from agent_grpo.plugins import DEMOS_GROUP, distribution_of, iter_entry_points, load_entry_point

DEFAULT = "default"


def list_demos() -> dict[str, str]:
    """Installed demo names -> the package that ships each (nothing is loaded)."""
    return {ep.name: distribution_of(ep) for ep in iter_entry_points(DEMOS_GROUP)}


def demo_config(name: str = DEFAULT) -> Path:
    """The pipeline YAML of the installed demo `name`."""
    eps = {ep.name: ep for ep in iter_entry_points(DEMOS_GROUP)}
    if name not in eps:
        raise PluginError(f"no demo named {name!r} is installed (entry-point group {DEMOS_GROUP}); "
                          f"installed: {', '.join(sorted(eps)) or 'none'}")
    value = load_entry_point(eps[name])
    if callable(value):
        value = value()
    if not isinstance(value, (str, Path)) or not Path(value).is_file():
        raise PluginError(f"demo {name!r} ({eps[name].value}) does not name a pipeline YAML file: {value!r}")
    return Path(value)
