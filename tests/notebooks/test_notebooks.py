"""The notebooks run top to bottom (headless, small settings) and stay plain: no definitions, no stored outputs.

Each notebook is executed with ``nbclient`` in a fresh kernel of this interpreter, with ``AUTOSPARSE_SMALL=1`` (every
notebook shrinks its runs) and ``HF_HUB_OFFLINE=1``, from a temporary working directory so that whatever a notebook
writes under ``outputs/`` lands there and not in the repository. A failing cell fails the test with its traceback.
The selected notebooks run at once (one kernel each, one intra-op thread each), so the file takes about as long as the
slowest of them rather than their sum on a machine with more than one core.
"""

from __future__ import annotations

import ast
import asyncio
import os
import threading
from pathlib import Path

import nbformat
import pytest

from tests.early_start import selected_items

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = ["01_quickstart", "02_surviving_scores", "03_bring_your_own_model"]
CELL_TIMEOUT = 300  # seconds per cell; the SMALL runs take a few seconds each


def _code(cell: nbformat.NotebookNode) -> str:
    # IPython magics and shell escapes are not Python.
    return "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))


def test_the_three_notebooks_exist() -> None:
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_plain(path: Path) -> None:
    """Outputs are cleared in git, there is a SMALL switch, and no cell defines what the library should provide."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "no code cells"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"stored outputs in cell {cell.source[:60]!r}"
        tree = ast.parse(_code(cell))
        defined = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        assert not defined, f"cell defines {[n.name for n in defined]}: helpers belong in autosparse_hf (plots.py)"
    assert 'os.environ.get("AUTOSPARSE_SMALL"' in code[0].source, "the first code cell must read the SMALL switch"
    assert any("import autosparse_hf" in c.source or "from autosparse_hf" in c.source for c in code)


# The executions, started once for the session: conftest.py starts them right after collection, in a thread (the
# kernels are processes), so that they run on the second core while the in-process tests run; the tests of this
# file run last and only wait for them.
_STARTED: dict[str, object] = {}


def start_early(session: pytest.Session, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Start every selected notebook at once, in a background thread, with the environment the kernels need."""
    if "thread" in _STARTED:
        return
    from nbclient import NotebookClient

    ids = {item.callspec.id for item in selected_items(session, __name__) if item.originalname == "test_notebook_runs"}
    selected = [p for p in NOTEBOOKS if p.stem in ids]
    runs = {}
    for path in selected:
        folder = tmp_path_factory.mktemp(path.stem)
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(
            nb,
            timeout=CELL_TIMEOUT,
            kernel_name="python3",
            allow_errors=False,  # the first failing cell raises CellExecutionError with its traceback
            resources={"metadata": {"path": str(folder)}},
        )
        runs[path.stem] = (nb, folder, client)
    # The kernels get this environment (the test process's own is left alone: TQDM_DISABLE would silence the
    # progress-bar tests running meanwhile); "python" in the kernel spec resolves to this interpreter.
    env = {
        **os.environ,
        "AUTOSPARSE_SMALL": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "TQDM_DISABLE": "1",
        "OMP_NUM_THREADS": "1",  # tiny models only lose time to thread contention on a small shared CPU
    }

    async def execute_all() -> list:
        return await asyncio.gather(
            *(client.async_execute(env=env) for _, _, client in runs.values()), return_exceptions=True
        )

    def run() -> None:
        try:
            outcomes = asyncio.run(execute_all())
        except BaseException as error:  # noqa: BLE001  (reported by every notebook's test)
            outcomes = [error] * len(runs)
        _STARTED["results"] = {
            stem: (nb, folder, outcome if isinstance(outcome, BaseException) else None)
            for (stem, (nb, folder, _)), outcome in zip(runs.items(), outcomes, strict=True)
        }

    thread = threading.Thread(target=run, name="notebooks", daemon=True)
    _STARTED["thread"] = thread
    thread.start()


@pytest.fixture(scope="module")
def executed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """Per notebook stem: the executed notebook, its working directory and the exception its execution raised
    (``None`` when every cell ran)."""
    start_early(request.session, tmp_path_factory)  # already started by conftest.py in a full run
    thread = _STARTED["thread"]
    thread.join()  # type: ignore[attr-defined]
    return _STARTED["results"]  # type: ignore[return-value]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, executed: dict[str, tuple]) -> None:
    nb, folder, error = executed[path.stem]
    if error is not None:
        raise error
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "a cell did not run"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors
    figures = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert figures or path.stem == "03_bring_your_own_model", "the notebook drew no figure"
    # Whatever the notebook wrote went to the temporary working directory.
    assert (folder / "outputs" / "notebooks").is_dir()
