"""Environment options from the command line: `--set key=value`, checked against the environment's constructor.

An environment's options are the keyword arguments of its constructor (what `env.options` of a training
config holds), minus the framework's own (`budget`, `tools`, `rubric`, `allow_tools`, `tool_timeout_s`). Their
annotations validate each value (pydantic), so `--set tool_bonus=abc` is refused naming the key before
anything loads. Values are read as YAML scalars (`3`, `0.5`, `true`, `null`, `/data/vstar`), like config overrides.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from agent_grpo.errors import ConfigError

FRAMEWORK_ARGS = frozenset({"self", "budget", "tools", "rubric", "allow_tools", "tool_timeout_s"})


def env_options(factory: type) -> dict[str, Any]:
    """The environment's own constructor options: name -> annotation (Any where there is none)."""
    try:
        hints = typing.get_type_hints(factory.__init__)
    except (NameError, TypeError):
        hints = {}
    return {
        name: hints.get(name, Any)
        for name, p in inspect.signature(factory.__init__).parameters.items()
        if name not in FRAMEWORK_ARGS and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }


def parse_env_options(env_name: str, factory: type, items: list[str]) -> dict[str, Any]:
    """`["root=/data/vstar", "tool_bonus=0.5"]` -> validated keyword arguments, only the keys given.

    A dotted key sets a field of a config-model option (`--set config.test_size=8`). Raises ConfigError
    naming the `--set` key that is malformed, unknown or of the wrong type."""
    options = env_options(factory)
    raw_values: dict[str, Any] = {}
    given: dict[str, str] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: write key=value, e.g. --set root=/data/vstar_bench")
        head, *path = key.split(".")
        if head not in options:
            accepted = ", ".join(options) or "no options"
            raise ConfigError(f"--set {key}: {env_name} has no option {head!r}; it accepts {accepted}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if path:
            node = raw_values.setdefault(head, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {head} was already set to a whole value")
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = value
        else:
            raw_values[head] = value
        given[head] = item
    values = {}
    for key, value in raw_values.items():
        try:
            values[key] = _validate(options[key], value)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join([key, *(str(x) for x in err["loc"] if not _is_union_branch(x))])
            raise ConfigError(f"--set {where}: {err['msg']} (given: {given[key]}; the option is "
                              f"{_type_name(options[key])})") from e
    return values


def _validate(annotation: Any, value: Any) -> Any:
    # A dict for a `SomeConfig | dict | None` option is checked as SomeConfig, so a bad field is named here.
    if isinstance(value, dict):
        for member in typing.get_args(annotation):
            if isinstance(member, type) and issubclass(member, BaseModel):
                return member.model_validate(value)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.model_validate(value)
    return TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True)).validate_python(value)


def _is_union_branch(loc: Any) -> bool:
    # pydantic names the union member it tried ("float", "function-after[...]"): not a field name
    return isinstance(loc, str) and ("[" in loc or loc in ("str", "int", "float", "bool", "none", "dict", "list"))


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
