"""The ``evaluation_audit`` table (not in the paper): per model, what the attack suite found beyond the
paper's PGD, which attack made the difference, and the attack-failure checks of ``advfine.core.audit``
with how many seeds each flagged. A model the audit flags carries the mark ``labels.FLAG_MARK`` in
the robustness cells of every other table. Its numbers are over the seeds that neither diverged nor
collapsed; the seeds left out are counted beside."""
from __future__ import annotations

import math

import pandas as pd

from advfine.pipeline.vocab import ATTACKS, AUDIT_CHECKS, model_label
from advfine.report.collect import METRIC_COLUMNS
from advfine.report.labels import NA, format_cell
from advfine.report.stats import GROUP_COLS, collapsed_mask, diverged_mask, mean_std, scored
from advfine.report.tables import compression_level_text, models_in_order

AUDIT_COLS = GROUP_COLS + [
    "model", "train", "compression", "finetune", "compression_level", "n", "diverged", "collapsed",
    "clean", "clean_mean", "pgd", "pgd_mean", "worst_case", "worst_case_mean", "gap_mean",
    "escalation_gain_mean", "escalated", "decisive_attack",
    *[c for a in ATTACKS if a != "pgd" for c in (f"broken_by_{a}_mean",)],
    *[c for check in AUDIT_CHECKS for c in (f"{check}_mean", f"{check}_flagged")],
    "flags", "int8_robust", "int8_robust_mean",
]


def _percent(rows: pd.DataFrame, column: str) -> tuple[float, float]:
    return mean_std(rows[column].astype(float) * 100.0)


def _decisive_attack(rows: pd.DataFrame) -> str:
    """The attack after PGD that broke the most samples (summed over seeds), "none" when none did."""
    broken = {a: rows[f"broken_by_{a}"].astype(float).sum() for a in ATTACKS if a != "pgd"}
    best = max(broken, key=broken.get)
    return best if broken[best] > 0 else "none"


def evaluation_audit(df: pd.DataFrame) -> pd.DataFrame:
    """One row per model (sorted as the compute table): clean, PGD (the paper's metric) and worst-case
    robust accuracy in % (mean ± std over seeds), the gap PGD minus worst case (points), the points the
    escalation took off the worst case (and the seeds it ran on), the attack that
    made the difference, the mean samples each later attack broke, every check's mean value (as a
    share of the test set, in %) and the seeds it flagged, and the deployed INT8 model's worst case."""
    df = df.reindex(columns=list(dict.fromkeys([*df.columns, *METRIC_COLUMNS])))  # older CSVs
    rows = []
    for keys, _, (train, compression, method, level, finetune), sel in models_in_order(df):
        diverged, collapsed = diverged_mask(sel), collapsed_mask(sel)
        n = int(sel["seed"].nunique())
        kept = scored(sel)
        clean, pgd, worst = (_percent(kept, c) for c in ("clean_acc", "robust_acc_pgd", "robust_acc"))
        gap = mean_std((kept["robust_acc_pgd"].astype(float) - kept["robust_acc"].astype(float)) * 100.0)[0]
        worst_case = kept["robust_acc"].astype(float)
        before = kept["robust_acc_before_escalation"].astype(float)
        escalation_gain = mean_std((before.fillna(worst_case) - worst_case) * 100.0)[0]
        int8 = _percent(kept, "int8_robust_acc")
        flags = kept["audit_flags"].fillna("")
        row = {**dict(zip(GROUP_COLS, keys)), "model": model_label(train, method, finetune, quant_kind=True),
               "train": train, "compression": compression, "finetune": finetune,
               "compression_level": compression_level_text(method, level), "n": n,
               "diverged": int(diverged.sum()), "collapsed": int(collapsed.sum()),
               "clean": format_cell(*clean), "clean_mean": clean[0],
               "pgd": format_cell(*pgd), "pgd_mean": pgd[0],
               "worst_case": format_cell(*worst), "worst_case_mean": worst[0], "gap_mean": gap,
               "escalation_gain_mean": escalation_gain, "escalated": int(before.notna().sum()),
               "decisive_attack": _decisive_attack(kept) if len(kept) else NA,
               "flags": ", ".join(sorted({f for joined in flags for f in joined.split(";") if f})) or "none",
               "int8_robust": format_cell(*int8), "int8_robust_mean": int8[0]}
        for attack in ATTACKS:
            if attack != "pgd":
                row[f"broken_by_{attack}_mean"] = mean_std(kept[f"broken_by_{attack}"])[0]
        for check in AUDIT_CHECKS:
            row[f"{check}_mean"] = mean_std(kept[f"audit_{check}"].astype(float) * 100.0)[0]
            row[f"{check}_flagged"] = sum(check in joined.split(";") for joined in flags)
        rows.append(row)
    return pd.DataFrame(rows, columns=AUDIT_COLS)


def format_points(value: float) -> str:
    """A share in % or a gap in points with two decimals; n/a when unknown."""
    return NA if value is None or math.isnan(value) else f"{value:.2f}"
