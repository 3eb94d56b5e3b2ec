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
"""
from __future__ import annotations

import math

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
