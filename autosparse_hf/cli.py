"""Argument parsing shared by the recipes: dataclasses via ``HfArgumentParser``, plus ``--config file.yaml``.

Values from the YAML file are type-checked against the dataclass fields before they become defaults, because
``argparse`` converts only string defaults and takes the rest as given: ``cycles: true`` would reach the code as
``True`` (the integer 1), ``exclude: fc3.weight`` as a string the code iterates character by character. The rules:

- ``int``: a YAML integer (not ``true``/``false``, not ``2.5``, not ``"5"``).
- ``float``: a YAML integer or float, or a string spelling a finite number (PyYAML, following YAML 1.1, reads
  ``1e-3`` without a dot as a string); stored as a float.
- ``str``: a YAML string (quote numbers, and the YAML 1.1 booleans ``yes``/``no``/``on``/``off``).
- ``bool``: ``true`` or ``false``.
- ``list[X]``: a YAML sequence whose items follow the rule of ``X``. A single value where a list is meant is an
  error, not a one-item list: ``exclude: fc3.weight`` must be written ``exclude: [fc3.weight]``, so that nothing is
  guessed (and no ``"a,b,c"`` string is taken for one value or three).
- ``X | None``: ``null`` or a value of ``X``; ``Literal[...]``: one of its values. Other annotations are left to
  ``argparse``.

Command-line flags are parsed by ``argparse`` with the same field types and override the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser


def parse_recipe_args(
    dataclass_types: Sequence[type], argv: Sequence[str] | None = None, description: str | None = None
) -> tuple[Any, ...]:
    """Parse command-line flags into ``dataclass_types``; ``--config x.yaml`` supplies defaults, flags override.

    Unknown keys in the YAML file are an error (naming the key and the file), so a typo never goes unnoticed, and
    every value is checked against its field's type (see the module docstring), the error naming the file, the key
    and the value. ``description`` (the recipe's docstring, by default the calling script's) heads ``--help``, which
    also lists ``--config``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = recipe_parser(dataclass_types, description)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ValueError("--config needs a YAML file path")
        path = Path(argv[i + 1])
        del argv[i : i + 2]
        parser.set_defaults(**_read_config(path, parser, dataclass_types))
    parsed = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=False)
    return tuple(p for p in parsed if dataclasses.is_dataclass(p))


def recipe_parser(dataclass_types: Sequence[type], description: str | None = None) -> HfArgumentParser:
    """The ``HfArgumentParser`` of a recipe: its dataclasses' fields, ``--config FILE.yaml``, ``description`` on top.

    ``description`` defaults to the docstring of the running script (``__main__``). Building it imports only what
    the dataclasses' modules import: a recipe keeps the library's heavy modules out of its ``--help``.
    """
    if description is None:
        main = sys.modules.get("__main__")
        description = getattr(main, "__doc__", None) if main is not None else None
    parser = HfArgumentParser(
        list(dataclass_types), description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # Listed for --help; read (and removed from argv) by parse_recipe_args, before the dataclass flags are parsed.
    parser.add_argument(
        "--config", metavar="FILE.yaml", help="YAML file of argument values (defaults); flags given here override it."
    )
    return parser


def _read_config(path: Path, parser: HfArgumentParser, dataclass_types: Sequence[type]) -> dict[str, Any]:
    """The YAML file's values, every key known and every value of its field's type."""
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values")
    known = {a.dest for a in parser._actions}
    unknown = sorted(set(values) - known, key=str)
    if unknown:
        raise ValueError(f"{path} has unknown keys {unknown}")
    fields = field_types(dataclass_types)
    return {key: check_value(value, fields[key], str(key), str(path)) if key in fields else value
            for key, value in values.items()}


def field_types(dataclass_types: Sequence[type]) -> dict[str, Any]:
    """Field name -> resolved type annotation of every init field of ``dataclass_types``."""
    result: dict[str, Any] = {}
    for cls in dataclass_types:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init:
                result[f.name] = hints[f.name]
    return result


def check_value(value: Any, annotation: Any, key: str, source: str) -> Any:
    """``value`` if it is of type ``annotation`` (a float field's int or numeric string made a float).

    Args:
        value: What YAML gave.
        annotation: The field's type: ``int``, ``float``, ``str``, ``bool``, ``list[X]``, ``X | None``,
            ``Literal[...]``; other types are passed through to ``argparse`` unchecked.
        key: The field (``name[i]`` for an item of a list), named in the error.
        source: The config file, named in the error.

    Raises:
        ValueError: ``"{source}: '{key}' is {value!r} ({type}); expected ..."``.
    """
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        optional = len(members) < len(args)
        if value is None and optional:
            return None
        if len(members) != 1:
            return value  # a union of several types: argparse cannot parse one either; left as given
        expected = _describe(members[0]) + (" or null" if optional else "")
        return _check_one(value, members[0], key, source, expected)
    return _check_one(value, annotation, key, source, _describe(annotation))


def _check_one(value: Any, annotation: Any, key: str, source: str, expected: str) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list:
        if not isinstance(value, list):
            _refuse(value, key, source, expected, f"write [{value}]" if _is_scalar(value) else "")
        item = args[0] if args else Any
        return [check_value(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is typing.Literal:
        # type() too: YAML true must not pass for a choice of 1, nor 1 for True.
        if not any(value == a and type(value) is type(a) for a in args):
            _refuse(value, key, source, expected)
        return value
    if annotation is float:
        return _as_float(value, key, source, expected)
    if annotation in (bool, int, str):
        # bool is a subclass of int: an exact type test keeps YAML true out of integer fields.
        if type(value) is not annotation:
            hint = ""
            if annotation is str and isinstance(value, bool):
                hint = "YAML reads unquoted yes/no/on/off/true/false as booleans: quote the value"
            elif annotation is str and _is_scalar(value):
                hint = f"quote it: '{value}'"
            _refuse(value, key, source, expected, hint)
        return value
    return value


def _as_float(value: Any, key: str, source: str, expected: str) -> float:
    """A float field's value: a YAML int or float, or a string spelling a finite number (PyYAML's ``1e-3``)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            return number
    _refuse(value, key, source, expected)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float)


def _describe(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list:
        item = _describe(args[0]) if args else "any"
        return f"a list (a YAML sequence, [a, b]) of {item} values"
    if origin is typing.Literal:
        return f"one of {list(args)}"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(annotation, str(annotation))


def _refuse(value: Any, key: str, source: str, expected: str, hint: str = "") -> typing.NoReturn:
    raise ValueError(
        f"{source}: {key!r} is {value!r} ({type(value).__name__}); expected {expected}" + (f"; {hint}" if hint else "")
    )
