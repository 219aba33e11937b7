"""Deprecated: moved to ``autosparse_hf.study.plots``."""

from ._deprecation import forward

_module, __getattr__ = forward("autosparse_hf.plots", "autosparse_hf.study.plots")
