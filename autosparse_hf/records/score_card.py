"""The dataset card (README.md with a YAML header) of a surviving-score dataset."""

from __future__ import annotations

from typing import Any

import yaml

from .report import cycle_table_markdown
from .score_schema import SCORE_SCHEMA_VERSION

_SIZE_CATEGORIES = ("n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B", "1B<n<10B")


def _size_category(num_rows: int) -> str:
    """The Hub's size category (one of the values ``huggingface_hub.DatasetCardData`` documents)."""
    for exponent, name in enumerate(_SIZE_CATEGORIES, start=3):
        if num_rows < 10**exponent:
            return name
    return "10B<n<100B"


def score_dataset_card(info: dict[str, Any], num_rows: int) -> str:
    """Card text recording the IRP configuration, model, task, seed and the per-cycle density/accuracy table."""
    identity = info.get("identity", {})
    header = {
        "tags": ["autosparse", "pruning", "lottery-ticket", "pruning-at-initialization"],
        "size_categories": [_size_category(num_rows)],
        "autosparse_score_schema": SCORE_SCHEMA_VERSION,
    }
    config_rows = "\n".join(f"| {k} | {v} |" for k, v in info.get("config", {}).items())
    training = info.get("training") or {}
    training_rows = "\n".join(f"| {k} | {v} |" for k, v in training.items()) or "| (not recorded) | |"
    return f"""---
{yaml.safe_dump(header, sort_keys=False).strip()}
---

# Surviving scores: {identity.get('model', '')} on {identity.get('task', '')}

One row per prunable weight of `{identity.get('model', '')}` (seed {identity.get('seed')}, run `{identity.get('run_id')}`):
the weight's features at initialization (`w0`, `g0` averaged over {info.get('feature_num_batches')} batches, layer
context) and how long it survived iterative rewind pruning (`cycle_pruned`, `surviving_score`), for training an
AutoSparse predictor (Liu et al. 2024, [arXiv 2408.14757](https://arxiv.org/abs/2408.14757)). Made with
`autosparse_hf.IRPCallback`; score schema version {SCORE_SCHEMA_VERSION}; {num_rows} rows.

The surviving score of a weight pruned after cycle `c` of `E` is `(c - 1) / E`; survivors of every cycle score 1.
The IRP mask after cycle `c` is `cycle_pruned > c`.

## IRP configuration

| setting | value |
|---|---|
{config_rows}

## Training recipe of every cycle

| setting | value |
|---|---|
{training_rows}

## Tickets per cycle (evaluated before each rewind)

{cycle_table_markdown(info.get('history', []))}

## Use it

```python
from autosparse_hf import load_score_dataset
from autosparse_hf.predictor.training import AutoSTrainingArguments, train_autos

scores = load_score_dataset("<this folder, its scores.parquet, or the Hub id>")   # checked on load
predictor, report = train_autos(AutoSTrainingArguments(output_dir="autos"), dataset=scores)
```
"""
