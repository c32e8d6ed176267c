"""Demo pipelines shipped by plugin packages (entry-point group `agent_grpo.demos`).

An environment package that wants `agent-grpo demo --demo NAME` to run its pipeline declares

    [project.entry-points."agent_grpo.demos"]
    NAME = "my_package:DEMO_YAML"      # a path to a PipelineConfig YAML, or a callable returning one

The entry point named `default` is the README's main job, and the environment it trains on is the one a config or
command that names none gets (`default_env_name`). The framework itself names no demo and no environment.
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


def default_env_name() -> str:
    """The environment the installed `default` demo trains on (its `grpo.env.name`): what `env.name` and `--env`
    mean when they are not given."""
    import yaml

    try:
        path = demo_config(DEFAULT)
    except PluginError as e:
        raise PluginError(f"no environment is named and none is the default ({e}): set env.name or give --env") from None
    try:
        name = yaml.safe_load(path.read_text())["grpo"]["env"]["name"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise PluginError(f"the default demo's {path} names no grpo.env.name ({type(e).__name__}: {e})") from None
    if not isinstance(name, str) or not name:
        raise PluginError(f"the default demo's {path}: grpo.env.name must be an environment name, not {name!r}")
    return name
