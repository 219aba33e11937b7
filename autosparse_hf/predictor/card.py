"""The model card (README.md with YAML metadata, as the Hub renders it) of a trained AutoS predictor."""

from __future__ import annotations

from typing import Any

import yaml

from .configuration import AutoSConfig


def predictor_card(config: AutoSConfig, report: dict[str, Any]) -> str:
    """Card recording what the predictor was trained on and how, its held-out metrics and how to use it."""
    metrics = report.get("metrics", {})
    header = {
        "library_name": "autosparse_hf",
        "tags": ["autosparse", "pruning", "pruning-at-initialization", "lottery-ticket"],
        "model-index": [{"name": "AutoS", "results": []}],
    }
    arguments = report.get("arguments", {})
    setup_rows = "\n".join(
        f"| {k} | {arguments[k]} |"
        for k in ("architecture", "feature_set", "target", "loss", "budgets", "within_layer", "epochs", "batch_size",
                  "learning_rate", "seed")
        if k in arguments
    )
    names = sorted({k.split("_", 1)[1] for k in metrics if k.startswith("autos_")})
    metric_rows = "\n".join(
        f"| {who} | " + " | ".join(f"{metrics.get(f'{who}_{n}', float('nan')):.4f}" for n in names) + " |"
        for who in ("autos", "magnitude", "snip")
    )
    budgets = "a learned layer-budget model" if config.budget_model else "no layer-budget model (one global threshold)"
    return f"""---
{yaml.safe_dump(header, sort_keys=False).strip()}
---

# AutoS predictor

A per-weight pruning-at-initialization predictor of AutoSparse (Liu et al. 2024,
[arXiv 2408.14757](https://arxiv.org/abs/2408.14757)), trained on the IRP runs {', '.join(config.training_sources)}
with `autosparse_hf.predictor.training.train_autos`. It has {budgets}; its recipe ranks weights inside each layer
with `{config.within_layer}` (`AutoSCallback` and `PruneConfig.from_predictor` follow it). Feature schema version
{config.feature_schema_version}; features averaged over {config.feature_num_batches} batches.

## Training

| setting | value |
|---|---|
{setup_rows}

## Held-out metrics ({report.get('eval_rows')} rows of {', '.join(report.get('eval_tensors', []))})

| scores | {' | '.join(names)} |
|---|{'---:|' * len(names)}
{metric_rows}

## Use it

```python
import autosparse_hf

callback = autosparse_hf.AutoSCallback(predictor="<this folder or Hub id>", sparsity=0.95)  # Trainer(callbacks=[...])
masks = autosparse_hf.prune_at_init(model, config=autosparse_hf.PruneConfig.from_predictor("<same>", sparsity=0.95),
                                    dataloader=loader)
```
"""
