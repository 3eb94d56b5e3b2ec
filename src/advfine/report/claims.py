"""The ``claims`` table (not in the paper): each claim of the paper (and the controls' question) as a formal
comparison of two models, decided by a statistic generated from the per-sample results, never by hand.

A claim compares model A with model B on one metric (clean accuracy or worst-case robust accuracy): A is
greater, less, or equivalent (within ``margin`` points). Both models are evaluated on the same test
samples for the same seeds, so the comparison is paired over seeds and samples (``paired.compare``): the
difference A - B in points with a 95 % two-level bootstrap interval, which alone gives the verdict
(confirmed, refuted, inconclusive at this number of seeds and samples), and McNemar's exact test on the
pooled pairs beside it. A claim whose models were not run says "not run"; a diverged seed says
"diverged", a collapsed one (its model, or a model it was built from: ``stats.collapsed_mask``)
"collapsed", with the counts of such seeds of A and B, never a number. Models are taken at the report's
compression levels (``report.prune_sparsity``, ``report.ptq_bits``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from advfine.pipeline.vocab import DENSE, PRUNE, PTQ, QAT, SAMPLES, model_label
from advfine.report.paired import COLLAPSED, DIVERGED, compare, read_outcome
from advfine.report.stats import GROUP_COLS, collapsed_mask, groups, select
from advfine.report.tables import level_for

NOT_RUN = "not run"
NO_SAMPLES = "no samples.csv"
METRIC_COLUMNS = {"clean": "clean_correct", "robust": "robust"}  # samples.csv column of each metric
METRIC_RESULTS = {"clean": "clean_acc", "robust": "robust_acc"}  # the eval.json accuracy it must agree with


@dataclass(frozen=True)
class Claim:
    """A is ``kind`` (greater / less / equivalent) than B on ``metric``; A and B are (train, method,
    finetune) at the report's levels."""

    key: str
    text: str
    a: tuple[str, str, str]
    b: tuple[str, str, str]
    metric: str
    kind: str


F_ST, F_RB = ("st", DENSE, "none"), ("rb", DENSE, "none")
# The paper's claims (Sections 5-6, Tables 2, 3 and 5), then the controls' question.
CLAIMS = (
    Claim("C1", "Adversarial training makes the dense model robust", F_RB, F_ST, "robust", "greater"),
    Claim("C2", "Adversarial training costs clean accuracy", F_RB, F_ST, "clean", "less"),
    Claim("C3", "Adversarial fine-tuning makes the standard model robust", ("st", DENSE, "ad"), F_ST, "robust",
          "greater"),
    Claim("C4", "T_ad(f_st) is as robust as f_rb", ("st", DENSE, "ad"), F_RB, "robust", "equivalent"),
    Claim("C5", "Pruning without fine-tuning destroys clean accuracy", ("st", PRUNE, "none"), F_ST, "clean", "less"),
    Claim("C6", "INT8 PTQ without fine-tuning keeps clean accuracy", ("st", PTQ, "none"), F_ST, "clean",
          "equivalent"),
    Claim("C7", "PTQ by itself keeps the robust model's robustness", ("rb", PTQ, "none"), F_RB, "robust",
          "equivalent"),
    Claim("C8", "Standard fine-tuning of a pruned standard model gives no robustness: T_ad does",
          ("st", PRUNE, "ad"), ("st", PRUNE, "st"), "robust", "greater"),
    Claim("C9", "Standard fine-tuning of a quantized robust model loses its robustness", ("rb", PTQ, "st"),
          ("rb", PTQ, "none"), "robust", "less"),
    Claim("C10", "Adversarial fine-tuning of the pruned standard model reaches f_rb's robustness",
          ("st", PRUNE, "ad"), F_RB, "robust", "equivalent"),
    Claim("C11", "Adversarial fine-tuning of the quantized standard model reaches f_rb's robustness",
          ("st", PTQ, "ad"), F_RB, "robust", "equivalent"),
    Claim("C12", "Adversarial fine-tuning of the pruned robust model keeps f_rb's robustness",
          ("rb", PRUNE, "ad"), F_RB, "robust", "equivalent"),
    Claim("C13", "QAT is not better than PTQ after adversarial fine-tuning (Table 5)", ("rb", QAT, "ad"),
          ("rb", PTQ, "ad"), "robust", "equivalent"),
    Claim("X1", "Control: adversarial fine-tuning of the pruned standard model beats PGD training of the pruned "
          "architecture from scratch at the same budget", ("st", PRUNE, "ad"), ("st", PRUNE, "scratch"), "robust",
          "greater"),
    Claim("X2", "Control: adversarial fine-tuning of the quantized standard model beats PGD training of the "
          "quantized architecture from scratch at the same budget", ("st", PTQ, "ad"), ("st", PTQ, "scratch"),
          "robust", "greater"),
    Claim("X3", "Control: FGSM-RS fine-tuning of the pruned standard model is as robust as PGD fine-tuning",
          ("st", PRUNE, "fgsm"), ("st", PRUNE, "ad"), "robust", "equivalent"),
    Claim("X4", "Control: TRADES fine-tuning of the pruned standard model is as robust as PGD fine-tuning",
          ("st", PRUNE, "trades"), ("st", PRUNE, "ad"), "robust", "equivalent"),
    Claim("X5", "Control: FGSM-RS fine-tuning of the pruned standard model for the compute of PGD fine-tuning is as "
          "robust as PGD fine-tuning", ("st", PRUNE, "fgsm-eqcost"), ("st", PRUNE, "ad"), "robust", "equivalent"),
)

CLAIMS_COLS = GROUP_COLS + [
    "claim", "statement", "a", "b", "metric", "kind", "margin", "n_seeds", "n_samples", "a_mean", "b_mean",
    "diff", "ci_low", "ci_high", "mcnemar_p", "n01", "n10", "a_diverged", "b_diverged", "a_collapsed", "b_collapsed",
    "verdict",
]
_RESULT_COLS = ["n_samples", "a_mean", "b_mean", "diff", "ci_low", "ci_high", "mcnemar_p", "n01", "n10",
                "a_diverged", "b_diverged", "a_collapsed", "b_collapsed", "verdict"]


def _collapsed_by_seed(rows: pd.DataFrame) -> dict[int, bool]:
    """{seed: whether its model, or a model it was built from, collapsed}."""
    return dict(zip(rows["seed"].astype(int), collapsed_mask(rows)))


def _samples_files(rows: pd.DataFrame) -> dict[int, Path]:
    """{seed: the samples.csv beside its eval.json}."""
    return {int(r["seed"]): Path(r["path"]).parent / SAMPLES for _, r in rows.iterrows()}


def _reported(rows: pd.DataFrame, metric: str) -> dict[int, float | None]:
    """{seed: the eval.json accuracy of ``metric``} (None for a diverged model)."""
    return {int(r["seed"]): (None if pd.isna(r[METRIC_RESULTS[metric]]) else float(r[METRIC_RESULTS[metric]]))
            for _, r in rows.iterrows()}


def _rows(g: pd.DataFrame, model: tuple[str, str, str], levels: dict) -> pd.DataFrame:
    """The rows of ``model`` at the report's level of its method (none when that level is not set)."""
    train, method, finetune = model
    if method != DENSE and levels[method] is None:
        return g.iloc[0:0]
    return select(g, train, method, finetune, levels[method])


def _label(model: tuple[str, str, str]) -> str:
    return model_label(model[0], model[1], model[2], quant_kind=True)


def claims_table(df: pd.DataFrame, prune_level: float | Mapping[str, float], ptq_bits: int | Mapping[str, int],
                 margin: float = 5.0, n_boot: int = 2000) -> pd.DataFrame:
    """One row per claim and (experiment, dataset, arch) group: the two models, the statistic and the
    verdict, paired over the seeds both models have. ``margin``: the equivalence margin in points."""
    rows = []
    outcomes: dict[tuple[Path, str], object] = {}  # a model serves several claims: read each file once

    def outcome(path: Path, metric: str, reported: float | None):
        column = METRIC_COLUMNS[metric]
        if (path, column) not in outcomes:
            outcomes[path, column] = read_outcome(path, column)
        read = outcomes[path, column]
        # the claims and the tables (from eval.json) describe one evaluation: the file agrees with its eval.json
        if read is not None and reported is not None and not math.isnan(reported) and \
                abs(read.correct.mean() - reported) > 0.5 / len(read.correct):
            raise ValueError(f"{path}: column {column!r} gives accuracy {read.correct.mean():.4f}, its eval.json "
                             f"{METRIC_RESULTS[metric]} {reported:.4f}: the file was edited or is from another "
                             "evaluation; re-run the evaluation")
        return read

    for keys, g in groups(df):
        bits = level_for(ptq_bits, keys[1])
        levels = {PRUNE: level_for(prune_level, keys[1]), PTQ: bits, QAT: bits, DENSE: None}
        for claim in CLAIMS:
            sel_a, sel_b = _rows(g, claim.a, levels), _rows(g, claim.b, levels)
            seeds = sorted(set(sel_a["seed"].astype(int)) & set(sel_b["seed"].astype(int)))
            row = {**dict(zip(GROUP_COLS, keys)), "claim": claim.key, "statement": claim.text,
                   "a": _label(claim.a), "b": _label(claim.b), "metric": claim.metric, "kind": claim.kind,
                   "margin": margin, "n_seeds": len(seeds)}
            if not seeds:
                rows.append(row | {"verdict": NOT_RUN})
                continue
            files_a, files_b = _samples_files(sel_a), _samples_files(sel_b)
            missing = [str(f) for s in seeds for f in (files_a[s], files_b[s]) if not f.is_file()]
            if missing:  # a results folder read outside the workflow, whose rules make samples.csv beside eval.json
                rows.append(row | {"verdict": f"{NO_SAMPLES} ({missing[0]})"})
                continue
            collapsed_a, collapsed_b = _collapsed_by_seed(sel_a), _collapsed_by_seed(sel_b)
            reported_a, reported_b = (_reported(sel, claim.metric) for sel in (sel_a, sel_b))
            result = compare([outcome(files_a[s], claim.metric, reported_a[s]) for s in seeds],
                             [outcome(files_b[s], claim.metric, reported_b[s]) for s in seeds], claim.kind, margin,
                             n_boot, a_collapsed=[collapsed_a[s] for s in seeds],
                             b_collapsed=[collapsed_b[s] for s in seeds])
            rows.append(row | {k: result[k] for k in _RESULT_COLS})
    return pd.DataFrame(rows, columns=CLAIMS_COLS)


def _number(value: float, pattern: str = "{:.2f}") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else pattern.format(value)


def layout_claims(rows: pd.DataFrame) -> pd.DataFrame:
    """The Markdown/LaTeX layout of one (experiment, dataset, arch) group."""
    kind = {"greater": "A > B", "less": "A < B", "equivalent": "A ≈ B"}
    return pd.DataFrame({
        "Claim": rows["claim"], "Statement": rows["statement"], "A": rows["a"], "B": rows["b"],
        "Metric": rows["metric"], "Claimed": rows["kind"].map(kind), "n": rows["n_seeds"].astype(int).astype(str),
        "A (%)": rows["a_mean"].map(_number), "B (%)": rows["b_mean"].map(_number),
        "A - B (points)": rows["diff"].map(_number),
        "95 % CI": [f"[{_number(lo)}, {_number(hi)}]" for lo, hi in zip(rows["ci_low"], rows["ci_high"])],
        "McNemar p": rows["mcnemar_p"].map(lambda p: _number(p, "{:.2g}")),
        "Verdict": [_verdict_text(r) for _, r in rows.iterrows()],
    }).reset_index(drop=True)


def _verdict_text(row: pd.Series) -> str:
    """The verdict, with the seeds of A and B that decided a "diverged" or "collapsed" one:
    ``"collapsed (A 1/3, B 0/3)"``."""
    if row["verdict"] not in (DIVERGED, COLLAPSED):
        return row["verdict"]
    verdict, n = row["verdict"], int(row["n_seeds"])
    return f"{verdict} (A {int(row['a_' + verdict])}/{n}, B {int(row['b_' + verdict])}/{n})"

