"""Deprecated: the surviving-score dataset moved to ``autosparse_hf.records``."""

from .._deprecation import forward

_module, __getattr__ = forward("autosparse_hf.scores", "autosparse_hf.records")
