"""The `agent-grpo` console script: one app, one sub-command group per area.

Plugin packages add command groups through the `agent_grpo.commands` entry points (`agent-grpo NAME ...`);
one is imported only when it is run or listed, so a slow or broken plugin never slows or breaks the rest.

Errors agent-grpo raises on purpose (`AgentGrpoError`: a bad config, a missing plugin, an unreadable run)
end any command with their message and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from agent_grpo.cli.demo import demo
from agent_grpo.cli.envs import envs_app
from agent_grpo.cli.eval import evaluate
from agent_grpo.cli.rollouts import rollouts
from agent_grpo.cli.serve import serve_engine
from agent_grpo.cli.sft import sft
from agent_grpo.cli.tools import tools_app
from agent_grpo.cli.train import train
from agent_grpo.errors import AgentGrpoError


class _UserErrorsAsMessages(TyperGroup):
    """The top-level group: a user's mistake is a message, never a traceback; plugins' command groups."""

    def list_commands(self, ctx):
        from agent_grpo.plugins import COMMANDS_GROUP, iter_entry_points

        own = super().list_commands(ctx)
        return [*own, *(ep.name for ep in iter_entry_points(COMMANDS_GROUP) if ep.name not in own)]

    def get_command(self, ctx, name):
        return super().get_command(ctx, name) or _plugin_command(name)  # a built-in command wins a name clash

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except AgentGrpoError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise typer.Exit(2) from e


def _plugin_command(name: str):
    import click

    from agent_grpo.errors import PluginError
    from agent_grpo.plugins import COMMANDS_GROUP, iter_entry_points, load_entry_point

    ep = next((ep for ep in iter_entry_points(COMMANDS_GROUP) if ep.name == name), None)
    if ep is None:
        return None
    try:
        obj = load_entry_point(ep)
        if callable(obj) and not isinstance(obj, typer.Typer):
            obj = obj()
        if not isinstance(obj, typer.Typer):
            raise PluginError(f"command plugin {name!r} ({ep.value}) is not a typer.Typer app")
    except PluginError as e:
        error = e

        def fail(**_):  # `--help` still lists every command; running this one is the message
            raise error

        return click.Command(name, callback=fail, help=f"(broken plugin) {e}",
                             context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    command = typer.main.get_command(obj)
    command.name = name
    return command


app = typer.Typer(
    cls=_UserErrorsAsMessages,
    name="agent-grpo",
    help="Train vision-language models to think with images: tools, environments, rollouts, GRPO, replay.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _print_version(value: bool) -> None:
    if value:
        from agent_grpo.cli.version import version_text

        typer.echo(version_text())
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="print agent-grpo's, its plugin packages', torch's, transformers' and vLLM's "
                                      "versions, and exit"),
) -> None:
    """Train vision-language models to think with images: tools, environments, rollouts, GRPO, replay."""


app.add_typer(tools_app, name="tools")
app.add_typer(envs_app, name="envs")
app.command("train")(train)
app.command("demo")(demo)
app.command("rollouts")(rollouts)
app.command("eval")(evaluate)
app.command("sft")(sft)
app.command("serve-engine")(serve_engine)


def _add_optional(module: str, attr: str, name: str) -> None:
    # Sub-apps that pull in torch/transformers are imported here so `tools list` stays fast.
    import importlib

    sub = getattr(importlib.import_module(module), attr)
    app.add_typer(sub, name=name)


_add_optional("agent_grpo.cli.model", "model_app", "model")
_add_optional("agent_grpo.cli.replay", "replay_app", "replay")

if __name__ == "__main__":
    app()
