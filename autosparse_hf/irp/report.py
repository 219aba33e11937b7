"""Deprecated: moved to ``autosparse_hf.records.report``."""

from .._deprecation import forward

_module, __getattr__ = forward("autosparse_hf.irp.report", "autosparse_hf.records.report")
