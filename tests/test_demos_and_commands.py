"""Plugin packages ship demos (`agent_grpo.demos`) and command groups (`agent_grpo.commands`)."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint

import pytest
from typer.testing import CliRunner

from agent_grpo import plugins
from agent_grpo.errors import PluginError
from agent_grpo.recipes.demos import demo_config, list_demos


@pytest.fixture
def fake_plugins(monkeypatch, tmp_path):
    """Entry points of a throw-away module `fake_plugin` (what a third-party package would declare)."""
    (tmp_path / "pipe.yaml").write_text("start: x\nsft: {}\ngrpo: {}\n")
    (tmp_path / "fake_plugin.py").write_text(
        "from pathlib import Path\nimport typer\n"
        f"DEMO = Path({str(tmp_path / 'pipe.yaml')!r})\n"
        "def demo_factory():\n    return DEMO\n"
        "MISSING = Path('/nonexistent/pipe.yaml')\n"
        "app = typer.Typer()\n"
        "@app.callback()\ndef _group():\n    'fake commands'\n"
        "@app.command()\ndef hello(name: str):\n    print(f'hello {name}')\n"
        "NOT_AN_APP = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("fake_plugin", None)
    eps = [
        EntryPoint("default", "fake_plugin:DEMO", plugins.DEMOS_GROUP),
        EntryPoint("made", "fake_plugin:demo_factory", plugins.DEMOS_GROUP),
        EntryPoint("missing", "fake_plugin:MISSING", plugins.DEMOS_GROUP),
        EntryPoint("fake", "fake_plugin:app", plugins.COMMANDS_GROUP),
        EntryPoint("broken", "fake_plugin:NOT_AN_APP", plugins.COMMANDS_GROUP),
        EntryPoint("demo", "fake_plugin:app", plugins.COMMANDS_GROUP),  # clashes with a built-in command
    ]
    monkeypatch.setattr(plugins, "entry_points", lambda group: [ep for ep in eps if ep.group == group])
    return tmp_path


def test_demo_config_resolves_paths_and_factories_and_names_what_is_installed(fake_plugins):
    assert demo_config() == fake_plugins / "pipe.yaml"  # `default` is what `agent-grpo demo` runs
    assert demo_config("made") == fake_plugins / "pipe.yaml"
    assert set(list_demos()) == {"default", "made", "missing"}
    with pytest.raises(PluginError, match=r"no demo named 'nope' is installed .*installed: default, made, missing"):
        demo_config("nope")
    with pytest.raises(PluginError, match="does not name a pipeline YAML file"):
        demo_config("missing")


def test_plugin_command_groups_run_under_their_name_and_a_broken_one_is_a_message(fake_plugins):
    from agent_grpo.cli.main import app

    runner = CliRunner()
    ok = runner.invoke(app, ["fake", "hello", "you"])
    assert ok.exit_code == 0 and ok.output.strip() == "hello you"
    listing = runner.invoke(app, ["--help"])
    assert listing.exit_code == 0 and "fake commands" in listing.output and "(broken plugin)" in listing.output
    bad = runner.invoke(app, ["broken", "--anything"])
    assert bad.exit_code == 2 and "command plugin 'broken' (fake_plugin:NOT_AN_APP) is not a typer.Typer app" in bad.output
    builtin = runner.invoke(app, ["demo", "--help"])  # the built-in demo command wins the clash
    assert builtin.exit_code == 0 and "--demo" in builtin.output


def test_the_environment_package_ships_its_demos_and_pretraining_command():
    from agent_grpo.cli.main import app

    assert {"default", "visual-search-find", "visual-search-boxed"} <= set(list_demos())
    # the main job is the find variant; the box-in-the-question task stays available for contrast
    assert demo_config().name == demo_config("visual-search-find").name == "demo_find.yaml"
    assert demo_config("visual-search-boxed").name == "demo.yaml"
    result = CliRunner().invoke(app, ["visual-search", "pretrain", "--help"])
    assert result.exit_code == 0 and "--locate-steps" in result.output
