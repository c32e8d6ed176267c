"""`agent-grpo tools ...`: what the installed tool plugins provide."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from agent_grpo.cli._console import make_console
from agent_grpo.tools.registry import load_tools

tools_app = typer.Typer(help="Inspect installed tool plugins (entry-point group agent_grpo.tools).", no_args_is_help=True)


@tools_app.command("list")
def list_tools(
    schema: bool = typer.Option(
        False, "--schema", help="print the tools' JSON schemas, as the model sees them (piped: the JSON alone)"
    ),
) -> None:
    """List installed tools with their package, box frame and argument schema."""
    registry = load_tools()
    console = make_console()
    if schema and not console.is_terminal:  # for `| jq` and scripts: one JSON document, nothing else
        typer.echo(json.dumps([t.json_schema() for t in registry], indent=2))
        return
    table = Table(title=f"{len(registry)} tools installed")
    for col in ("name", "aliases", "package", "box frame", "images", "deterministic", "arguments"):
        table.add_column(col)
    for t in registry:
        props = t.arguments.model_json_schema().get("properties", {})
        required = set(t.arguments.model_json_schema().get("required", []))
        args = ", ".join(f"{k}{'' if k in required else '?'}: {v.get('type', 'any')}" for k, v in props.items())
        table.add_row(
            t.name, ", ".join(t.manifest.aliases), registry.source_of(t.name), str(t.manifest.box_frame or "-"),
            "yes" if t.manifest.returns_images else "no", "yes" if t.manifest.deterministic else "no", args,
        )
    console.print(table)
    if schema:
        console.print_json(json.dumps([t.json_schema() for t in registry]))
