"""Every setting's key, type, default, a configuration's value and meaning, read from the settings' dataclasses."""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import typing
from typing import Any, Dict, List

from config.settings import PipelineConfig


# Fields that record a choice made elsewhere (--profile), not values to set.
NOT_SETTINGS = ("profile",)


@dataclasses.dataclass(frozen=True)
class Setting:
    key: str  # dotted, as --set and a config file take it
    type: str
    default: Any
    value: Any  # in the configuration asked about
    meaning: str


def settings(config: PipelineConfig) -> List[Setting]:
    """Every setting, in declaration order, with its value in `config`."""
    rows: List[Setting] = []
    _walk(PipelineConfig(), config, "", rows)
    return rows


def attribute_docs(cls: type) -> Dict[str, str]:
    """Field name -> its attribute docstring: the string literal right after the field, as IDEs and Sphinx read it."""
    return dict(_attribute_docs(cls))


@functools.lru_cache(maxsize=None)
def _attribute_docs(cls: type) -> tuple:
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return tuple(
        (stmt.target.id, " ".join(following.value.value.split()))
        for stmt, following in zip(body, body[1:])
        if isinstance(stmt, ast.AnnAssign)
        and isinstance(stmt.target, ast.Name)
        and isinstance(following, ast.Expr)
        and isinstance(following.value, ast.Constant)
        and isinstance(following.value.value, str)
    )


def type_name(hint: Any) -> str:
    """`int`, `float or null`, `list of str`, ...: what --set and a config file accept."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in args:
        return type_name(next(a for a in args if a is not type(None))) + " or null"
    if typing.get_origin(hint) in (list, typing.List):
        return "list of " + type_name(args[0])
    return getattr(hint, "__name__", str(hint))


def _walk(defaults: Any, config: Any, prefix: str, rows: List[Setting]) -> None:
    hints = typing.get_type_hints(type(config))
    docs = attribute_docs(type(config))
    for field in dataclasses.fields(config):
        if (prefix + field.name) in NOT_SETTINGS:
            continue
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            _walk(getattr(defaults, field.name), value, f"{prefix}{field.name}.", rows)
            continue
        rows.append(
            Setting(
                prefix + field.name,
                type_name(hints[field.name]),
                getattr(defaults, field.name),
                value,
                docs.get(field.name, ""),
            )
        )
