"""Deprecated: moved to ``autosparse_hf.records``."""

from ._deprecation import forward

_module, __getattr__ = forward("autosparse_hf.tickets", "autosparse_hf.records")
