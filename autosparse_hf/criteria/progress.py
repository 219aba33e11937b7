"""Progress bars for long scoring (SynFlow's rounds, FORCE's steps, AutoS's tensors), one switch for all of them."""

from __future__ import annotations

from typing import Any

# With ``progress=None`` a scoring bar shows only once scoring has run this long (tqdm's ``delay``): bars are for
# waits a user notices, not for the milliseconds a small model takes.
PROGRESS_DELAY_S = 2.0


def scoring_progress(total: int, desc: str, progress: bool | None, unit: str = "it") -> Any:
    """A ``tqdm`` bar over ``total`` steps of scoring (SynFlow's rounds, FORCE's steps, AutoS's tensors).

    ``progress=True`` shows it from the start and ``False`` never. ``None`` follows transformers' progress-bar switch
    (``transformers.utils.logging.disable_progress_bar()``, ``HF_HUB_DISABLE_PROGRESS_BARS=1``), like the
    ``Trainer``'s and ``datasets``' bars, and shows the bar only once scoring has run ``PROGRESS_DELAY_S`` seconds.
    The bar goes away when scoring ends (the wall time is logged instead).
    """
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled() if progress is None else progress
    delay = PROGRESS_DELAY_S if progress is None else 0.0
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, delay=delay, leave=False)
