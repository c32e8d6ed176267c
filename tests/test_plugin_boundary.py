"""The framework names no plugin: `agent_grpo/` imports neither the built-in tools nor the environments.

Built-in tools and environments are ordinary plugin packages found through entry points
(`agent_grpo/plugins.py`); a framework module importing one would tie the framework to it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import agent_grpo

PLUGIN_PACKAGES = ("agent_grpo_envs", "agent_grpo_tools")


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args:
            if isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def test_framework_imports_no_plugin_package():
    root = Path(agent_grpo.__file__).parent
    offenders = {
        str(path.relative_to(root)): sorted(m for m in imported_modules(path) if m.split(".")[0] in PLUGIN_PACKAGES)
        for path in sorted(root.rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_check_sees_an_import(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from agent_grpo_envs.visual_search import x\n    import importlib\n"
                    "    importlib.import_module('agent_grpo_tools.zoom')\n")
    assert imported_modules(path) == {"agent_grpo_envs.visual_search", "importlib", "agent_grpo_tools.zoom"}


def string_constants(path: Path) -> set[str]:
    return {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def test_framework_names_no_installed_environment():
    """Not even as a default: which environment a config or command gets when it names none is the plugins'
    choice (the `default` demo's), so an environment package can be uninstalled or replaced."""
    from agent_grpo.plugins import ENVS_GROUP, iter_entry_points

    names = {ep.name for ep in iter_entry_points(ENVS_GROUP)}
    assert "visual-search" in names  # the check has something to find
    root = Path(agent_grpo.__file__).parent
    offenders = {str(p.relative_to(root)): sorted(string_constants(p) & names) for p in sorted(root.rglob("*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_an_unnamed_environment_is_the_default_demos_and_its_absence_is_a_message(tmp_path, monkeypatch):
    import yaml

    from agent_grpo.errors import PluginError
    from agent_grpo.recipes import demos
    from agent_grpo.train.config import EnvConfig, load_config

    shipped = yaml.safe_load(demos.demo_config().read_text())["grpo"]["env"]["name"]
    assert demos.default_env_name() == shipped == EnvConfig().name == load_config(None, []).env.name
    assert EnvConfig(name="vstar").name == "vstar"

    other = tmp_path / "other.yaml"
    other.write_text("start: x\nsft: {}\ngrpo: {env: {name: grounding}}\n")
    monkeypatch.setattr(demos, "demo_config", lambda name=demos.DEFAULT: other)
    assert EnvConfig().name == "grounding"
    other.write_text("start: x\nsft: {}\ngrpo: {steps: 3}\n")
    with pytest.raises(PluginError, match="names no grpo.env.name"):
        EnvConfig()

    def none_installed(name=demos.DEFAULT):
        raise PluginError("no demo named 'default' is installed")

    monkeypatch.setattr(demos, "demo_config", none_installed)
    with pytest.raises(PluginError, match="no environment is named and none is the default.*set env.name or give --env"):
        load_config(None, [])
    assert load_config(None, ["env.name=vstar"]).env.name == "vstar"  # a named one needs no default
