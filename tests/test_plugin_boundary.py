"""The framework names no plugin: `agent_grpo/` imports neither the built-in tools nor the environments.

Built-in tools and environments are ordinary plugin packages found through entry points
(`agent_grpo/plugins.py`); a framework module importing one would tie the framework to it.
"""

from __future__ import annotations

import ast
from pathlib import Path

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
