"""The lazily exporting packages (autosparse_hf, .irp, .predictor): every public name resolves, nothing heavy on import.

``__getattr__`` (PEP 562) imports a name's module on first use; the name tables and the ``TYPE_CHECKING`` imports
(what IDEs and type checkers read) must agree with ``__all__``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAZY_PACKAGES = ["autosparse_hf", "autosparse_hf.irp", "autosparse_hf.predictor"]


def _type_checking_names(package: str) -> dict[str, str]:
    """Name -> submodule of the imports under ``if TYPE_CHECKING:`` in the package's ``__init__.py``."""
    path = Path(importlib.util.find_spec(package).origin)
    names = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.level == 1, ast.dump(imp)
                names.update({alias.name: imp.module for alias in imp.names})
    return names


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_name_tables_agree(package):
    module = importlib.import_module(package)
    table = {name: sub for sub, names in module._EXPORTS.items() for name in names}
    assert sorted(table) == sorted(module.__all__)
    assert _type_checking_names(package) == table


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_every_public_name_resolves_to_its_definition(package):
    module = importlib.import_module(package)
    for sub, names in module._EXPORTS.items():
        source = importlib.import_module(f"{package}.{sub}")
        for name in names:
            assert getattr(module, name) is getattr(source, name), f"{package}.{name}"
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        module.not_a_name  # noqa: B018


def test_fresh_import_is_light_and_names_load_on_use():
    probe = """
import json, sys
import autosparse_hf as A
light = sorted(m for m in ("torch", "transformers", "datasets", "timm", "matplotlib") if m in sys.modules)
from autosparse_hf import PruneConfig, IRPConfig
from autosparse_hf.irp import IRPConfig as Same
print(json.dumps({"light": light, "same": IRPConfig is Same, "features": A.features.__name__}))
"""
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["light"] == [] and result["same"] and result["features"] == "autosparse_hf.features"


def test_star_import_gives_every_public_name():
    namespace: dict = {}
    exec("from autosparse_hf import *", namespace)  # noqa: S102
    import autosparse_hf

    assert set(autosparse_hf.__all__) <= set(namespace)


def test_the_predictor_registers_with_the_auto_classes_where_defined():
    from transformers import AutoConfig, AutoModel

    from autosparse_hf.predictor.modeling import AutoSConfig, AutoSModel

    assert type(AutoConfig.for_model("autos")) is AutoSConfig
    assert AutoModel.from_config(AutoSConfig()).__class__ is AutoSModel
