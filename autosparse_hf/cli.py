"""Argument parsing shared by the recipes: dataclasses via ``HfArgumentParser``, plus ``--config file.yaml``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser


def parse_recipe_args(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parse command-line flags into ``dataclass_types``; ``--config x.yaml`` supplies defaults, flags override.

    Unknown keys in the YAML file are an error (naming the key and the file), so a typo never goes unnoticed.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(list(dataclass_types))
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ValueError("--config needs a YAML file path")
        path = Path(argv[i + 1])
        del argv[i : i + 2]
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a mapping of argument names to values")
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path} has unknown keys {unknown}")
        parser.set_defaults(**values)
    return tuple(parser.parse_args_into_dataclasses(args=argv))
