"""The ``controls`` table (not in the paper): per compressed architecture, adversarial fine-tuning T_ad beside
the control arms of ``sweep.controls`` (other objectives at the same budget, and PGD training of the
same architecture from random initialization at the fine-tuning and at the base-training budget), with
clean and worst-case robust accuracy, the wall time and estimated MACs of the arm's own training, mean ±
std over seeds. A row says what it starts from, its objective and its budget, so two rows that differ in
one of them only can be compared (the claims table does so with paired statistics)."""
from __future__ import annotations

import pandas as pd

from advfine.pipeline.vocab import (ADVERSARIAL_FINETUNING, BASE_MODELS, CONTROLS, EQUAL_COST_SUFFIX, SCRATCH_CONTROLS,
                                    model_label)
from advfine.report.labels import format_macs, format_minutes, stat_cell
from advfine.report.stats import GROUP_COLS, groups, mean_std, summarize
from advfine.report.tables import compression_level_text, model_sort_key

OBJECTIVES = {"ad": "PGD", "fgsm": "FGSM-RS", "nfgsm": "N-FGSM", "trades": "TRADES", "fgsm-eqcost": "FGSM-RS",
              "nfgsm-eqcost": "N-FGSM", "scratch": "PGD", "scratch-full": "PGD"}
ARMS = ADVERSARIAL_FINETUNING + SCRATCH_CONTROLS  # the row order within a compressed model

CONTROLS_COLS = GROUP_COLS + [
    "compression", "compression_level", "model", "train", "finetune", "start", "objective", "budget", "n",
    "test", "robustness", "test_mean", "test_std", "robust_mean", "robust_std", "diverged", "collapsed",
    "flagged", "train_wall_min", "train_wall_min_mean", "train_wall_min_std", "train_macs", "train_macs_mean",
]


def _arm(train: str, finetune: str) -> tuple[str, str]:
    """(what the arm starts from, its budget)."""
    if finetune in SCRATCH_CONTROLS:
        return "random init", "base training" if finetune == "scratch-full" else "fine-tuning"
    return f"f_{train} weights", "fine-tuning compute" if finetune.endswith(EQUAL_COST_SUFFIX) else "fine-tuning"


def controls_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (compressed model, adversarial arm) that was run: T_ad and every control of the sweep,
    for every compression level, in the compute table's order; empty when no control was run. The
    arm's own training is its finetune stage (wall time in minutes, estimated MACs)."""
    rows = []
    for keys, g in groups(df):
        g = g[g["method"] != "dense"]
        if not g["finetune"].isin(list(CONTROLS)).any():
            continue
        arms = g[g["finetune"].isin(ARMS)]
        models = sorted(arms.groupby(["compression", "method", "level", "train", "finetune"], sort=False),
                        key=lambda kv: (model_sort_key("", kv[0][1], kv[0][2], "")[2:5], ARMS.index(kv[0][4]),
                                        list(BASE_MODELS).index(kv[0][3]) if kv[0][3] in BASE_MODELS else 9))
        for (compression, method, level, train, finetune), sel in models:
            s = summarize(sel)
            wall = mean_std(sel.get("finetune_wall_time_s", pd.Series(dtype=float)) / 60.0)
            macs = mean_std(sel.get("finetune_estimated_macs", pd.Series(dtype=float)))[0]
            start, budget = _arm(train, finetune)
            rows.append({
                **dict(zip(GROUP_COLS, keys)), "compression": compression,
                "compression_level": compression_level_text(method, level),
                "model": model_label(train, method, finetune, quant_kind=True), "train": train,
                "finetune": finetune, "start": start, "objective": OBJECTIVES[finetune], "budget": budget,
                "n": s["n"], "test": stat_cell(s, "test"), "robustness": stat_cell(s, "robust"),
                "test_mean": s["test_mean"], "test_std": s["test_std"], "robust_mean": s["robust_mean"],
                "robust_std": s["robust_std"], "diverged": s["diverged"], "collapsed": s["collapsed"],
                "flagged": s["flagged"],
                "train_wall_min": format_minutes(*wall), "train_wall_min_mean": wall[0],
                "train_wall_min_std": wall[1], "train_macs": format_macs(macs), "train_macs_mean": macs,
            })
    return pd.DataFrame(rows, columns=CONTROLS_COLS)


def layout_controls(rows: pd.DataFrame) -> pd.DataFrame:
    """The Markdown/LaTeX layout of one (experiment, dataset, arch) group."""
    return pd.DataFrame({
        "Compression": rows["compression_level"], "Model": rows["model"], "Start": rows["start"],
        "Objective": rows["objective"], "Budget": rows["budget"], "n": rows["n"].astype(int).astype(str),
        "Test": rows["test"], "Robustness": rows["robustness"], "Training time (min)": rows["train_wall_min"],
        "Training MACs (est.)": rows["train_macs"],
    }).reset_index(drop=True)

