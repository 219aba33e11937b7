"""The AutoS predictor: config, model (registered with the transformers Auto classes), training, metrics.

Names are imported on first use (see ``autosparse_hf._lazy``), so that the recipe's arguments
(``autosparse_hf.predictor.arguments``) import neither torch nor transformers' models. ``AutoSConfig`` and
``AutoSModel`` register themselves with ``AutoConfig`` / ``AutoModel`` where they are defined (``configuration.py``,
``modeling.py``): any use of the predictor (``load_predictor``, ``AutoSModel``, the ``autos`` criterion) registers them.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS: dict[str, list[str]] = {
    "configuration": ["ARCHITECTURES", "LOSSES", "AutoSConfig"],
    "loading": ["load_predictor"],
    "modeling": ["AutoSModel", "AutoSOutput"],
}

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from .configuration import ARCHITECTURES, LOSSES, AutoSConfig
    from .loading import load_predictor
    from .modeling import AutoSModel, AutoSOutput

__all__ = ["ARCHITECTURES", "LOSSES", "AutoSConfig", "AutoSModel", "AutoSOutput", "load_predictor"]
