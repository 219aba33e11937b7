"""Deprecated: moved to ``autosparse_hf.study.benchmark``."""

from ._deprecation import forward

_module, __getattr__ = forward("autosparse_hf.benchmark", "autosparse_hf.study.benchmark")
