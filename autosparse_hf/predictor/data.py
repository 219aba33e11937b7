"""Feature matrices and honest train/evaluation splits from surviving-score datasets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
import torch
from datasets import Dataset

from ..features import LayerContext, layer_feature_matrix
from ..records.score_schema import SCORE_FEATURES

NEEDED_COLUMNS = tuple(SCORE_FEATURES)


@dataclass
class ScoreTable:
    """Rows of one or more score datasets as arrays, with one feature matrix computed layer by layer.

    Attributes:
        features: ``(N, F)`` raw feature vectors (``layer_feature_matrix``, identical to prune time).
        surviving_score, cycle_pruned, cycles: Targets per row.
        run_ids, param_names: Per-row identity (numpy string arrays via codes).
        group: Integer id of the (run, tensor) a row belongs to.
        w0, g0: Raw features, for the magnitude and SNIP baselines on the same weights.
    """

    features: torch.Tensor
    surviving_score: np.ndarray
    cycle_pruned: np.ndarray
    cycles: np.ndarray
    run_id: np.ndarray
    param_name: np.ndarray
    group: np.ndarray
    w0: np.ndarray
    g0: np.ndarray
    densities: dict[str, list[float]]
    layers: dict[str, list[LayerContext]] | None = None

    def budget_runs(self) -> list[tuple[list[LayerContext], dict[str, np.ndarray]]]:
        """Per run present in these rows: its tensors (all of them) and their ``cycle_pruned`` arrays."""
        runs = []
        for rid in dict.fromkeys(self.run_id.tolist()):
            in_run = self.run_id == rid
            layers = (self.layers or {}).get(rid, [])
            records = {layer.name: self.cycle_pruned[in_run & (self.param_name == layer.name)] for layer in layers}
            if layers and all(len(records[layer.name]) == layer.numel for layer in layers):
                runs.append((layers, records))
        return runs

    def survivors_at(self, density: float) -> np.ndarray:
        """Rows that survive IRP at the cycle whose global density (in their run) is nearest ``density``."""
        result = np.zeros(len(self.cycle_pruned), dtype=bool)
        for rid, dens in self.densities.items():
            rows = self.run_id == rid
            cycle = int(np.argmin([abs(d - density) for d in dens]))
            result[rows] = self.cycle_pruned[rows] > cycle
        return result

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def subset(self, rows: np.ndarray) -> ScoreTable:
        return ScoreTable(
            features=self.features[torch.from_numpy(rows)],
            surviving_score=self.surviving_score[rows],
            cycle_pruned=self.cycle_pruned[rows],
            cycles=self.cycles[rows],
            run_id=self.run_id[rows],
            param_name=self.param_name[rows],
            group=self.group[rows],
            w0=self.w0[rows],
            g0=self.g0[rows],
            densities=self.densities,
            layers=self.layers,
        )


def _column(table, name: str) -> np.ndarray:  # noqa: ANN001
    return table.column(name).to_numpy()


def score_table(dataset: Dataset, feature_set: str) -> ScoreTable:
    """Compute the feature matrix of every row of a score dataset, one (run, tensor) group at a time."""
    missing = [c for c in NEEDED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(f"score dataset lacks columns {missing}")
    if dataset._indices is not None:
        dataset = dataset.flatten_indices()
    table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
    run_id = pc.cast(table.column("run_id"), "string").to_numpy(zero_copy_only=False).astype(str)
    param_name = pc.cast(table.column("param_name"), "string").to_numpy(zero_copy_only=False).astype(str)
    keys = np.char.add(np.char.add(run_id, "\x00"), param_name)
    _, first, group = np.unique(keys, return_index=True, return_inverse=True)
    index = _column(table, "index")
    w0 = _column(table, "w0").astype(np.float32)
    g0 = _column(table, "g0").astype(np.float32)
    unit_columns = {c: _column(table, c) for c in ("unit_in", "unit_out", "input_std")}
    kinds = pc.cast(table.column("layer_kind"), "string").to_numpy(zero_copy_only=False).astype(str)
    ctx = {c: _column(table, c) for c in ("fan_in", "fan_out", "depth", "relative_depth", "numel")}
    from ..features import feature_names

    matrix = torch.empty(len(w0), len(feature_names(feature_set)), dtype=torch.float32)
    run_layers: dict[str, list[LayerContext]] = {}
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(len(first) + 1))
    for g in range(len(first)):
        rows = order[bounds[g] : bounds[g + 1]]
        rows = rows[np.argsort(index[rows], kind="stable")]  # position order, as in the tensor
        r = rows[0]
        # Features are statistics of the whole tensor (std, mean |g0|, ranks): a tensor with duplicated rows (the
        # same run loaded twice) or missing rows (a filtered dataset) would silently get other features than at
        # prune time.
        if len(rows) != int(ctx["numel"][r]) or np.any(np.diff(index[rows]) != 1) or index[rows[0]] != 0:
            raise ValueError(
                f"run {str(run_id[r])!r}, tensor {str(param_name[r])!r}: {len(rows)} rows for a tensor of {int(ctx['numel'][r])} "
                "weights, or duplicated positions; every weight of a tensor must appear exactly once (a score dataset "
                "given twice? a filtered dataset? subsample with max_train_rows instead)"
            )
        layer = LayerContext(
            name=param_name[r],
            kind=kinds[r],
            fan_in=int(ctx["fan_in"][r]),
            fan_out=int(ctx["fan_out"][r]),
            depth=int(ctx["depth"][r]),
            relative_depth=float(ctx["relative_depth"][r]),
            numel=int(ctx["numel"][r]),
            shape=(int(ctx["numel"][r]),),
        )
        run_layers.setdefault(str(run_id[r]), []).append(layer)
        units = {c: torch.from_numpy(np.ascontiguousarray(v[rows])) for c, v in unit_columns.items()}
        matrix[torch.from_numpy(rows)] = layer_feature_matrix(
            torch.from_numpy(w0[rows]), torch.from_numpy(g0[rows]), layer, feature_set, units
        )
    cycle_pruned = _column(table, "cycle_pruned").astype(np.int32)
    cycles = _column(table, "cycles").astype(np.int32)
    densities: dict[str, list[float]] = {}
    for rid in dict.fromkeys(run_id.tolist()):
        rows = run_id == rid
        # Global density of the run after each cycle, from the data itself (exact, no metadata needed).
        densities[rid] = [float((cycle_pruned[rows] > c).mean()) for c in range(int(cycles[rows][0]) + 1)]
    return ScoreTable(
        features=matrix,
        surviving_score=_column(table, "surviving_score").astype(np.float32),
        cycle_pruned=cycle_pruned,
        cycles=cycles,
        run_id=run_id,
        param_name=param_name,
        group=group.astype(np.int64),
        w0=w0,
        g0=g0,
        densities=densities,
        layers={rid: sorted(layers, key=lambda layer: layer.depth) for rid, layers in run_layers.items()},
    )


def split_rows(
    table: ScoreTable,
    eval_split: str = "auto",
    eval_runs: Sequence[str] = (),
    eval_layers: Sequence[str] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Train and evaluation row indices that never share a weight.

    ``runs`` holds out whole IRP runs (``eval_runs``, default the last run); ``layers`` holds out whole tensors
    (``eval_layers``, default the middle prunable tensor of every run); ``auto`` is ``runs`` when there are several
    runs, else ``layers``. Rows of the same (run, tensor) never land on both sides.
    """
    runs = list(dict.fromkeys(table.run_id.tolist()))
    if eval_split == "auto":
        eval_split = "runs" if len(runs) > 1 else "layers"
    if eval_split == "runs":
        is_eval = _held_out(table.run_id, eval_runs, default=-1, what=("eval_runs", "runs", "run"))
    elif eval_split == "layers":
        is_eval = _held_out(table.param_name, eval_layers, default=None, what=("eval_layers", "tensors", "tensor"))
    else:
        raise ValueError(f"eval_split must be auto, runs or layers, got {eval_split!r}")
    return np.nonzero(~is_eval)[0], np.nonzero(is_eval)[0]


def _held_out(values: np.ndarray, requested: Sequence[str], default: int | None, what: tuple[str, str, str]) -> np.ndarray:
    """Rows whose unit (run or tensor) is held out: ``requested``, else the last unit (``default=-1``) or the
    middle one (``None``). Unknown units and holding out every unit are errors."""
    option, plural, singular = what
    units = list(dict.fromkeys(values.tolist()))
    held = list(requested) or [units[default if default is not None else len(units) // 2]]
    unknown = [u for u in held if u not in units]
    if unknown:
        raise ValueError(f"{option} {unknown} are not among the {plural} {units}")
    if set(held) >= set(units):
        raise ValueError(f"holding out every {singular} leaves nothing to train on")
    return np.isin(values, held)
