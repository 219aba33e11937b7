"""Deprecated: moved to ``autosparse_hf.study.grid``."""

from ._deprecation import forward

_module, __getattr__ = forward("autosparse_hf.experiments", "autosparse_hf.study.grid")
