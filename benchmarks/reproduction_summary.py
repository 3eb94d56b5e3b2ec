"""The comparison of a Fashion-MNIST run with the paper that docs/results/<run>/README.md shows: per model
of the paper's Tables 2, 3 and 5, the paper's test / robust accuracy beside ours (clean, the paper's PGD
and the per-sample worst case over the attack suite), mean ± std over seeds; then the verdict of every
claim of the run's claims table, and T_ad beside every control arm seed by seed (clean / worst case: a
collapsed seed shows as chance level, which a mean ± std hides). Optionally beside them: a twin run of the same study under another
threat model (``--twin``, e.g. the paper-faithful one: its clean, PGD and worst-case accuracy and its claim
verdicts, to separate what the threat model changes from what the budget changes), and the robust
accuracies of an earlier run of the same models (``--before``).

    .venv/bin/python benchmarks/reproduction_summary.py docs/results/fmnist-cpu \
        [--twin docs/results/fmnist-cpu-paper-faithful] [--before OLD_all_metrics.csv]

Reads ``all_metrics.csv`` and ``tables/claims.csv`` in each run's folder; prints Markdown.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from advfine.pipeline.vocab import CONTROLS, model_label
from advfine.report.labels import format_cell, health_text
from advfine.report.stats import collapsed_mask, diverged_mask, mean_std

REPO = Path(__file__).resolve().parents[1]

# The paper's Fashion-MNIST numbers (Tables 2, 3 and 5: test and robust accuracy in %, mean ± std over
# 3 seeds; 80 % pruning, INT8 PTQ), keyed by (train, method, finetune).
PAPER = {
    ("st", "dense", "none"): ("90.49 ± 0.22", "4.26 ± 2.36"), ("rb", "dense", "none"): ("87.87 ± 0.33", "82.51 ± 0.16"),
    ("st", "dense", "ad"): ("85.37 ± 0.44", "77.53 ± 1.17"),
    ("st", "prune", "none"): ("33.21 ± 3.96", "0.33 ± 0.64"), ("st", "prune", "st"): ("88.94 ± 1.03", "0.28 ± 0.64"),
    ("st", "prune", "ad"): ("83.91 ± 1.53", "76.74 ± 2.33"),
    ("st", "ptq", "none"): ("90.40 ± 0.16", "11.72 ± 2.71"), ("st", "ptq", "st"): ("90.07 ± 0.56", "7.00 ± 1.44"),
    ("st", "ptq", "ad"): ("84.93 ± 0.71", "79.43 ± 0.59"),
    ("rb", "prune", "none"): ("16.68 ± 4.57", "14.40 ± 5.47"), ("rb", "prune", "st"): ("87.71 ± 0.40", "16.26 ± 5.45"),
    ("rb", "prune", "ad"): ("84.53 ± 1.21", "78.84 ± 2.04"),
    ("rb", "ptq", "none"): ("87.90 ± 0.34", "82.80 ± 0.14"), ("rb", "ptq", "st"): ("89.54 ± 0.47", "25.66 ± 10.61"),
    ("rb", "ptq", "ad"): ("87.51 ± 0.04", "82.65 ± 0.11"),
}


def cell(rows: pd.DataFrame, column: str) -> str:
    """Mean ± std over seeds, or "collapsed (k/n)" / "diverged (k/n)": such a seed is never averaged."""
    if rows.empty or column not in rows:
        return "n/a"
    unhealthy = health_text(int(diverged_mask(rows).sum()), int(collapsed_mask(rows).sum()), int(rows["seed"].nunique()))
    return unhealthy or format_cell(*mean_std(rows[column].astype(float) * 100.0))


def model_rows(df: pd.DataFrame, train: str, method: str, finetune: str) -> pd.DataFrame:
    return df[(df["train"] == train) & (df["method"] == method) & (df["finetune"] == finetune)]


def threat_model(run: pd.DataFrame) -> str:
    if "attack_eps_space" not in run:
        return "n/a"
    pairs = run[["attack_eps_space", "attack_eps_pixel"]].drop_duplicates()
    return ", ".join(f"{space} (pixel eps {eps:g})" for space, eps in pairs.itertuples(index=False))


def print_header(header: str) -> None:
    print(header + "\n" + "|---" * (header.count("|") - 1) + "|")


def claim_cells(c: pd.Series) -> str:
    diff = "n/a" if pd.isna(c["diff"]) else f"{c['diff']:.2f}"
    ci = "n/a" if pd.isna(c["ci_low"]) else f"[{c['ci_low']:.2f}, {c['ci_high']:.2f}]"
    verdict = c["verdict"]
    if verdict == "collapsed" and "a_collapsed" in c:
        verdict += f" (A {int(c['a_collapsed'])}, B {int(c['b_collapsed'])} of {int(c['n_seeds'])} seeds)"
    return f"{diff} | {ci} | {verdict}"


def print_arms_per_seed(name: str, df: pd.DataFrame) -> None:
    """T_ad and the control arms of each compressed model, one column per seed: clean / worst case (%)."""
    arms = df[df["finetune"].isin(["ad", *CONTROLS]) & (df["method"] != "dense")]
    if not set(arms["finetune"]) - {"ad"}:
        return
    seeds = sorted(int(s) for s in arms["seed"].unique())
    print(f"\n{name}: T_ad and the control arms per seed, clean / worst case (%)\n")
    header = "| model | " + " | ".join(f"seed {s}" for s in seeds) + " |"
    print_header(header)
    order = ["ad", *CONTROLS]
    for (train, method, finetune), rows in sorted(arms.groupby(["train", "method", "finetune"]),
                                                  key=lambda kv: (kv[0][0], kv[0][1], order.index(kv[0][2]))):
        by_seed = rows.set_index(rows["seed"].astype(int))
        cells = [f"{100 * by_seed.loc[s, 'clean_acc']:.1f} / {100 * by_seed.loc[s, 'robust_acc']:.1f}"
                 if s in by_seed.index else "n/a" for s in seeds]
        print(f"| {model_label(train, method, finetune)} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="folder with all_metrics.csv and tables/claims.csv")
    parser.add_argument("--twin", type=Path, help="folder of the same study under another threat model")
    parser.add_argument("--before", type=Path, help="all_metrics.csv of an earlier run of the same models")
    args = parser.parse_args()
    df = pd.read_csv(args.run / "all_metrics.csv")
    twin = pd.read_csv(args.twin / "all_metrics.csv") if args.twin else None
    before = pd.read_csv(args.before) if args.before else None
    for name, run in (("run", df), ("twin", twin)):
        if run is not None:
            seeds = sorted(int(s) for s in run["seed"].unique())
            print(f"{name}: seeds {seeds}; commit(s): {', '.join(sorted(run['git_commit'].astype(str).unique()))}; "
                  f"threat model: {threat_model(run)}")
    print()
    header = "| model | paper test | paper robust | here test | here PGD | here worst case |"
    header += " twin test | twin PGD | twin worst case |" if twin is not None else ""
    header += " earlier run: worst case |" if before is not None else ""
    print_header(header)
    for (train, method, finetune), (paper_test, paper_robust) in PAPER.items():
        line = f"| {model_label(train, method, finetune)} | {paper_test} | {paper_robust} |"
        for run in (df, twin):
            if run is not None:
                rows = model_rows(run, train, method, finetune)
                line += f" {cell(rows, 'clean_acc')} | {cell(rows, 'robust_acc_pgd')} | {cell(rows, 'robust_acc')} |"
        if before is not None:
            line += f" {cell(model_rows(before, train, method, finetune), 'robust_acc')} |"
        print(line)
    for name, run in (("run", df), ("twin", twin)):
        if run is not None:
            print_arms_per_seed(name, run)
    claims_path = args.run / "tables" / "claims.csv"
    if claims_path.is_file():
        claims = pd.read_csv(claims_path)
        twin_claims = None
        if args.twin and (args.twin / "tables" / "claims.csv").is_file():
            twin_claims = pd.read_csv(args.twin / "tables" / "claims.csv").set_index("claim")
        header = "\n| claim | statement | A − B (points) | 95 % CI | verdict |"
        header += " twin: A − B | twin: 95 % CI | twin: verdict |" if twin_claims is not None else ""
        print_header(header)
        for _, c in claims.iterrows():
            line = f"| {c['claim']} | {c['statement']} ({c['a']} vs {c['b']}, {c['metric']}) | {claim_cells(c)} |"
            if twin_claims is not None:
                line += (f" {claim_cells(twin_claims.loc[c['claim']])} |" if c["claim"] in twin_claims.index
                         else " n/a | n/a | n/a |")
            print(line)


if __name__ == "__main__":
    main()
