"""Deprecated: moved to ``autosparse_hf.study.pipeline``."""

from ._deprecation import forward

_module, __getattr__ = forward("autosparse_hf.pipeline", "autosparse_hf.study.pipeline")
