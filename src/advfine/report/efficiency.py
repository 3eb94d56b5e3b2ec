"""The robustness-cost frontier's tables (not in the paper); Figure 6 draws the same recipes.

* ``efficiency_table``: one row per recipe (train, method, level, finetune) of the run: its seeds, worst-case
  robust and clean accuracy, its cost to obtain (``stats.OBTAIN_UNITS``: the group's unit) and that cost's
  ratio to f_rb's, its deployed speed-up (the CPU latency of the dense model of the same base training
  without fine-tuning over its own) and whether it is Pareto-optimal in robust accuracy against each cost
  (``stats.recipe_stats``: numbers over the seeds that neither diverged nor collapsed).
* ``efficiency_stages``: the paper's "118 minutes of adversarial training, 14 of adversarial fine-tuning, 10
  for a compressed model" (Sec. 6) from this run's stages alone (eval.json ``stages``): f_rb's base training,
  the fine-tuning stage of the T_ad nodes of dense and of compressed models, and compression and QAT,
  each as a ratio to the base training, in wall time (what the paper measured) and in the group's cost unit,
  beside the paper's ratios. A stage's cost is a cost however its model ended: every seed counts.
"""
from __future__ import annotations

import math

import pandas as pd

from advfine.pipeline.vocab import DENSE, PRUNE, PTQ, QAT, compression_label, model_label
from advfine.report.labels import (NA, format_cost, format_minutes, format_ratio, format_speedup, seeds_text,
                                   stat_cell)
from advfine.report.stats import (DEPLOY_UNITS, GROUP_COLS, OBTAIN_UNITS, cost_unit, groups, mean_std,
                                  recipe_stats)
from advfine.report.tables import compression_level_text, model_sort_key

EFFICIENCY_COLS = GROUP_COLS + [
    "model", "train", "compression", "method", "level", "finetune", "compression_level", "n", "diverged",
    "collapsed", "scored", "robustness", "robust_mean", "robust_std", "test", "test_mean", "test_std",
    "cost_unit", "obtain_cost", "obtain_mean", "obtain_std", "obtain_ratio", "deploy_unit", "deploy_mean",
    "deploy_std", "latency_ms_mean", "latency_speedup", "pareto_obtain", "pareto_deploy",
]
# The reference of the cost ratios: full adversarial training, f_rb.
REFERENCE = ("rb", DENSE, "none")


def _compression(method: str, level: float) -> str:
    try:
        return compression_label(method, None if pd.isna(level) else level)
    except ValueError:  # a method the vocabulary does not know is still a recipe of the run
        return f"{method}-{level:g}" if pd.notna(level) else str(method)


def _ratio(value: float, reference: float) -> float:
    return value / reference if math.isfinite(value) and math.isfinite(reference) and reference else math.nan


def efficiency_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every recipe of every (experiment, dataset, arch) group, in the compute table's order
    (``model_sort_key``); empty for no rows."""
    rows = []
    for keys, g in groups(df):
        obtain, deploy = cost_unit(g, OBTAIN_UNITS), cost_unit(g, DEPLOY_UNITS)
        recipes = recipe_stats(g, obtain, deploy)
        ref = recipes[(recipes["train"] == REFERENCE[0]) & (recipes["method"] == REFERENCE[1])
                      & (recipes["finetune"] == REFERENCE[2])]
        ref_obtain = float(ref["obtain_mean"].iloc[0]) if len(ref) else math.nan
        dense = {r.train: r.latency_ms_mean for r in recipes.itertuples()
                 if r.method == DENSE and r.finetune == "none"}
        order = sorted(recipes.itertuples(), key=lambda r: model_sort_key(r.train, r.method, r.level, r.finetune))
        for r in order:
            # the seeds left out are counted in n; the cells average the others, so carry no health mark
            s = {"diverged": 0, "collapsed": 0, "flagged": r.flagged, "robust_mean": r.robust_mean,
                 "robust_std": r.robust_std, "test_mean": r.test_mean, "test_std": r.test_std}
            rows.append({
                **dict(zip(GROUP_COLS, keys)), "model": model_label(r.train, r.method, r.finetune, quant_kind=True),
                "train": r.train, "compression": _compression(r.method, r.level), "method": r.method,
                "level": r.level, "finetune": r.finetune,
                "compression_level": compression_level_text(r.method, r.level),
                "n": r.n, "diverged": r.diverged, "collapsed": r.collapsed, "scored": r.scored,
                "robustness": stat_cell(s, "robust"), "robust_mean": r.robust_mean, "robust_std": r.robust_std,
                "test": stat_cell(s, "test"), "test_mean": r.test_mean, "test_std": r.test_std,
                "cost_unit": obtain.symbol, "obtain_cost": format_cost(r.obtain_mean, r.obtain_std, obtain.symbol),
                "obtain_mean": r.obtain_mean, "obtain_std": r.obtain_std,
                "obtain_ratio": _ratio(r.obtain_mean, ref_obtain),
                "deploy_unit": deploy.symbol, "deploy_mean": r.deploy_mean, "deploy_std": r.deploy_std,
                "latency_ms_mean": r.latency_ms_mean,
                "latency_speedup": _ratio(dense.get(r.train, math.nan), r.latency_ms_mean),
                "pareto_obtain": bool(r.pareto_obtain), "pareto_deploy": bool(r.pareto_deploy),
            })
    return pd.DataFrame(rows, columns=EFFICIENCY_COLS)


def _yes(flags: pd.Series) -> pd.Series:
    return flags.map(lambda v: "yes" if bool(v) else "no")


def layout_efficiency(rows: pd.DataFrame) -> pd.DataFrame:
    """The Markdown/LaTeX layout of one (experiment, dataset, arch) group."""
    return pd.DataFrame({
        "Model": rows["model"], "Compression": rows["compression_level"],
        "n": [seeds_text(*counts) for counts in zip(rows["n"], rows["diverged"], rows["collapsed"])],
        "Robustness": rows["robustness"], "Test": rows["test"], "Cost to obtain": rows["obtain_cost"],
        "Cost / f_rb": rows["obtain_ratio"].map(format_ratio), "Speed-up": rows["latency_speedup"].map(format_speedup),
        "Pareto: obtain": _yes(rows["pareto_obtain"]), "Pareto: deployed": _yes(rows["pareto_deploy"]),
    }).reset_index(drop=True)


# ----------------------------------------------------------------------------- the paper's 118 -> 14 -> 10 minutes

# (step, the stage whose own cost it is, which nodes hold it once per model and seed, the paper's minutes)
_STEPS = [
    ("adversarial training of f_rb", "train_base",
     lambda g: (g["train"] == "rb") & (g["method"] == DENSE) & (g["finetune"] == "none"), 118.0),
    ("adversarial fine-tuning, dense models", "finetune",
     lambda g: (g["method"] == DENSE) & (g["finetune"] == "ad"), 14.0),
    ("adversarial fine-tuning, compressed models", "finetune",
     lambda g: (g["method"] != DENSE) & (g["finetune"] == "ad"), 10.0),
    ("compression (pruning, PTQ)", "compress",
     lambda g: g["method"].isin([PRUNE, PTQ]) & (g["finetune"] == "none"), None),
    ("quantization-aware training", "qat", lambda g: (g["method"] == QAT) & (g["finetune"] == "none"), None),
]
STAGES_COLS = GROUP_COLS + [
    "step", "stage", "nodes", "wall_min", "wall_min_mean", "wall_min_std", "wall_ratio", "cost_unit", "cost",
    "cost_mean", "cost_std", "cost_ratio", "paper_min", "paper_ratio",
]
PAPER_BASE_MIN = _STEPS[0][3]


def efficiency_stages(df: pd.DataFrame) -> pd.DataFrame:
    """Per group, one row per step of ``_STEPS`` (n/a where the run has none): the stage's own wall time
    (minutes) and cost (the group's ``OBTAIN_UNITS`` unit, from ``<stage>_<field>``), mean ± std over the
    nodes that hold it, and each as a ratio of means to f_rb's base training; the paper's minutes and
    ratio (its base training = 1)."""
    rows = []
    for keys, g in groups(df):
        unit = cost_unit(g, OBTAIN_UNITS)
        group_rows = []
        for step, stage, which, paper in _STEPS:
            sel = g[which(g)]
            wall = mean_std(sel.get(f"{stage}_wall_time_s", pd.Series(dtype=float)) / 60.0)
            cost = mean_std(sel.get(f"{stage}_{unit.stage_field}", pd.Series(dtype=float)) * unit.stage_scale)
            group_rows.append({
                **dict(zip(GROUP_COLS, keys)), "step": step, "stage": stage, "nodes": int(len(sel)),
                "wall_min": format_minutes(*wall), "wall_min_mean": wall[0], "wall_min_std": wall[1],
                "cost_unit": unit.symbol, "cost": format_cost(*cost, unit.symbol), "cost_mean": cost[0],
                "cost_std": cost[1], "paper_min": math.nan if paper is None else paper,
                "paper_ratio": math.nan if paper is None else paper / PAPER_BASE_MIN,
            })
        base = group_rows[0]
        for r in group_rows:
            r["wall_ratio"] = _ratio(r["wall_min_mean"], base["wall_min_mean"])
            r["cost_ratio"] = _ratio(r["cost_mean"], base["cost_mean"])
        rows += group_rows
    return pd.DataFrame(rows, columns=STAGES_COLS)


def _three(ratio: float) -> str:
    """A ratio with three decimals, as the paper's 0.119 and 0.085 are compared (a smaller one, as compression's
    seconds against hours, in scientific notation); n/a when unknown."""
    if not math.isfinite(ratio):
        return NA
    return f"{ratio:.3f}" if ratio == 0 or abs(ratio) >= 1e-3 else f"{ratio:.1e}"


def layout_efficiency_stages(rows: pd.DataFrame) -> pd.DataFrame:
    """The Markdown/LaTeX layout of one (experiment, dataset, arch) group."""
    return pd.DataFrame({
        "Step": rows["step"], "Stage": rows["stage"], "Nodes": rows["nodes"].astype(int).astype(str),
        "Wall time (min)": rows["wall_min"], "Wall ratio": rows["wall_ratio"].map(_three),
        "Cost": rows["cost"], "Cost ratio": rows["cost_ratio"].map(_three),
        "Paper (min)": rows["paper_min"].map(lambda m: NA if pd.isna(m) else f"{m:g}"),
        "Paper ratio": rows["paper_ratio"].map(_three),
    }).reset_index(drop=True)

