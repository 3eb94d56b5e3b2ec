"""Rows of one model and their statistics over seeds, shared by the tables and the figures.

* A cell is the mean and the sample standard deviation (ddof=1) over seeds; with a single seed the
  std is 0.0 (shown as 0.00), with no rows both are NaN (shown as ``n/a``).
* Accuracies are stored as fractions in eval.json and reported in percent.
* A model that diverged on any seed has no statistics (NaN): the tables say "diverged", never a
  number; so has a model that collapsed on any seed, itself or a model it was built from
  (``collapsed_mask``): the tables say "collapsed". A model whose evaluation raised an
  attack-failure flag on any seed is counted as flagged.
* Tables and figures are computed separately for each (experiment, dataset, arch) group
  (``GROUP_COLS``, ``groups``).
* The robustness-cost frontier (``recipe_stats``) is the exception that averages what it can: a recipe's
  numbers are over its ``scored`` seeds (neither diverged nor collapsed), the others counted beside; its
  costs are in the first ``CostUnit`` every scored row of the group has, and ``pareto_mask`` marks the
  recipes no other recipe beats.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

GROUP_COLS = ["experiment", "dataset", "arch"]


def groups(df: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    """[(group keys, rows)] per (experiment, dataset, arch), sorted; [] for no rows."""
    if df.empty:
        return []
    return list(df.groupby(GROUP_COLS, sort=True))


def select(g: pd.DataFrame, train: str, method: str, finetune: str,
           level: float | None = None) -> pd.DataFrame:
    """The rows of one model (every level of it when ``level`` is None)."""
    m = (g["train"] == train) & (g["method"] == method) & (g["finetune"] == finetune)
    if level is not None:
        m &= np.isclose(g["level"].astype(float), float(level))
    return g[m]


def diverged_count(rows: pd.DataFrame) -> int:
    """Seeds of these rows whose model diverged (0 for files that predate the key)."""
    return int(rows["diverged"].fillna(False).astype(bool).sum()) if "diverged" in rows else 0


def diverged_mask(rows: pd.DataFrame) -> pd.Series:
    """Per row: whether its model diverged (False for files that predate the key)."""
    if "diverged" not in rows:
        return pd.Series(False, index=rows.index)
    return rows["diverged"].fillna(False).astype(bool)


def collapsed_mask(rows: pd.DataFrame) -> pd.Series:
    """Per row: whether its model, or a model it was built from, collapsed to a constant classifier
    (``advfine.core.health``), and did not diverge (a diverged model is counted as that). False for files
    that predate the keys."""
    own = rows["collapsed"].fillna(False).astype(bool) if "collapsed" in rows else False
    upstream = rows["collapsed_upstream"].fillna("").astype(str) != "" if "collapsed_upstream" in rows else False
    return (pd.Series(False, index=rows.index) | own | upstream) & ~diverged_mask(rows)


def collapsed_count(rows: pd.DataFrame) -> int:
    """Seeds of these rows whose model, or a model it was built from, collapsed (``collapsed_mask``)."""
    return int(collapsed_mask(rows).sum())


def flagged_count(rows: pd.DataFrame) -> int:
    """Seeds of these rows whose evaluation raised an attack-failure flag."""
    return int((rows["audit_flags"].fillna("") != "").sum()) if "audit_flags" in rows else 0


def summarize(rows: pd.DataFrame) -> dict:
    """Seed statistics of a set of rows of one model: n, test/robust mean and std in percent, and how
    many seeds diverged, collapsed (``collapsed_mask``) or were flagged by the evaluation audit.

    Sample std (ddof=1); a single seed gives std 0.0; no rows, or a diverged or collapsed seed, gives
    NaNs."""
    n = int(rows["seed"].nunique()) if len(rows) else 0
    diverged = diverged_count(rows) if len(rows) else 0
    collapsed = collapsed_count(rows) if len(rows) else 0
    out: dict = {"n": n, "diverged": diverged, "collapsed": collapsed,
                 "flagged": flagged_count(rows) if len(rows) else 0}
    for key, col in (("test", "clean_acc"), ("robust", "robust_acc")):
        vals = rows[col].astype(float).to_numpy() * 100.0
        if n == 0 or diverged or collapsed:
            mean = std = math.nan
        else:
            mean = float(vals.mean())
            std = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        out[f"{key}_mean"], out[f"{key}_std"] = mean, std
    return out


def mean_std(values: pd.Series) -> tuple[float, float]:
    """Mean and sample std of the known (non-NaN) values; std 0.0 for one value, NaNs for none."""
    vals = values.astype(float).dropna().to_numpy()
    if len(vals) == 0:
        return math.nan, math.nan
    return float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0


def joined(values: pd.Series) -> str | float:
    """The distinct known values as text (``"256"``, ``"fp32, bf16"``), NaN when none."""
    found = sorted({str(int(v)) if isinstance(v, (int, float, np.integer, np.floating)) else str(v)
                    for v in values.dropna()})
    return ", ".join(found) if found else math.nan


def scored(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows whose model neither diverged nor collapsed (``collapsed_mask``): the seeds a number may average."""
    return rows[~diverged_mask(rows) & ~collapsed_mask(rows)]


def pareto_mask(cost, benefit) -> np.ndarray:
    """Per point: whether it is Pareto-optimal, i.e. no other point has a benefit at least as high at a cost
    at most as high, one of them strictly. Identical points do not dominate each other (both are optimal);
    a point with an unknown (NaN) cost or benefit is never optimal and dominates nothing."""
    cost, benefit = np.asarray(cost, dtype=float), np.asarray(benefit, dtype=float)
    known = ~(np.isnan(cost) | np.isnan(benefit))
    c, b = cost[:, None], benefit[:, None]  # row i: the point judged, column j: a rival
    dominated = (known[None, :] & (cost[None, :] <= c) & (benefit[None, :] >= b)
                 & ((cost[None, :] < c) | (benefit[None, :] > b))).any(axis=1)
    return known & ~dominated


@dataclass(frozen=True)
class CostUnit:
    """A unit of cost: all_metrics.csv's ``column`` times ``scale`` is the shown value in ``symbol``; a stage
    of the lineage gives its own as ``<stage>_<stage_field>`` times ``stage_scale``."""

    column: str
    scale: float
    symbol: str
    axis: str
    stage_field: str = ""
    stage_scale: float = 1.0


# The cost to obtain a model, in the first unit every node of a group has: energy where every lineage's
# energy was measured (comparable across CPUs and GPUs), else GPU time where every node used a GPU, else CPU
# time, which the ledger always records.
OBTAIN_UNITS = (
    CostUnit("obtain_energy_j", 1e-3, "kJ", "energy to obtain (kJ, measured)", "energy_j", 1e-3),
    CostUnit("obtain_gpu_h", 1.0, "GPU-h", "GPU-hours to obtain", "gpu_time_s", 1 / 3600),
    CostUnit("obtain_cpu_h", 1.0, "CPU-h", "CPU-hours to obtain (process CPU time)", "cpu_time_s", 1 / 3600),
)
# The deployed cost: CPU inference latency, else the stored weights' size.
DEPLOY_UNITS = (
    CostUnit("latency_ms", 1.0, "ms", "CPU inference latency (ms)"),
    CostUnit("weight_bytes", 1e-3, "kB", "weight size (kB)"),
)
RECIPE_COLS = ["train", "method", "level", "finetune"]


def cost_unit(rows: pd.DataFrame, units: tuple[CostUnit, ...]) -> CostUnit:
    """The first of ``units`` whose column every scored row has (the last one when none has)."""
    kept = scored(rows)
    for unit in units:
        if unit.column in kept and len(kept) and kept[unit.column].notna().all():
            return unit
    return units[-1]


RECIPE_STATS_COLS = [
    *RECIPE_COLS, "n", "diverged", "collapsed", "scored", "test_mean", "test_std", "robust_mean", "robust_std",
    "flagged", "obtain_mean", "obtain_std", "deploy_mean", "deploy_std", "latency_ms_mean", "pareto_obtain",
    "pareto_deploy",
]


def recipe_stats(g: pd.DataFrame, obtain: CostUnit, deploy: CostUnit) -> pd.DataFrame:
    """One row per recipe (train, method, level, finetune) of one group: its seeds (``n``, those that
    ``diverged``/``collapsed``, the ``scored`` rest), clean and robust accuracy (%) and the costs (in
    ``obtain``'s and ``deploy``'s units, and the latency in ms), mean and sample std over the scored seeds,
    and whether the recipe is Pareto-optimal in robust accuracy against each cost (``pareto_mask``; a recipe
    without a scored seed has NaNs and is not)."""
    out = []
    for recipe, rows in g.groupby(RECIPE_COLS, dropna=False, sort=True):
        kept = scored(rows)
        s = summarize(kept)
        out.append({
            **dict(zip(RECIPE_COLS, recipe)), "n": int(rows["seed"].nunique()),
            "diverged": diverged_count(rows), "collapsed": collapsed_count(rows), "scored": s["n"],
            **{k: s[k] for k in ("test_mean", "test_std", "robust_mean", "robust_std", "flagged")},
            **dict(zip(("obtain_mean", "obtain_std"), mean_std(kept.get(obtain.column, pd.Series(dtype=float))
                                                                * obtain.scale))),
            **dict(zip(("deploy_mean", "deploy_std"), mean_std(kept.get(deploy.column, pd.Series(dtype=float))
                                                                * deploy.scale))),
            "latency_ms_mean": mean_std(kept.get("latency_ms", pd.Series(dtype=float)))[0],
        })
    table = pd.DataFrame(out, columns=RECIPE_STATS_COLS)
    table["pareto_obtain"] = pareto_mask(table["obtain_mean"], table["robust_mean"])
    table["pareto_deploy"] = pareto_mask(table["deploy_mean"], table["robust_mean"])
    return table
