"""The controls and claims tables, from eval.json files with their per-sample outcomes (samples.csv)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from advfine.report import collect, render
from advfine.report.claims import CLAIMS, NO_SAMPLES, NOT_RUN, claims_table
from advfine.report.controls import controls_table

from test_report import make_record, write_records

N = 2000
# (train, compression, finetune) -> (clean, robust) accuracy; a sample is correct when its difficulty,
# shared by every model of a seed, is below the accuracy: the models are paired as real ones are.
MODELS = {
    ("st", "dense", "none"): (0.90, 0.05), ("rb", "dense", "none"): (0.80, 0.60),
    ("st", "dense", "ad"): (0.79, 0.595),   # within 0.5 points of f_rb: as robust (C4)
    ("st", "prune-0.8", "none"): (0.20, 0.01), ("st", "prune-0.8", "st"): (0.85, 0.04),
    ("st", "prune-0.8", "ad"): (0.75, 0.50), ("st", "prune-0.8", "scratch"): (0.70, 0.52),
    ("st", "prune-0.8", "fgsm"): (0.76, 0.49), ("st", "prune-0.8", "trades"): (0.74, 0.50),
    ("st", "ptq-int8", "none"): (0.90, 0.05), ("rb", "ptq-int8", "none"): (0.80, 0.60),
    ("rb", "ptq-int8", "st"): (0.85, 0.30),
}


def difficulty(seed: int) -> np.ndarray:
    """Each sample's rank of difficulty (0: easiest) for a seed: a model with accuracy a gets exactly the
    round(a N) easiest right, so the file agrees with its eval.json."""
    return np.argsort(np.argsort(np.random.default_rng(seed).random(N))) / N


def write_samples(path, clean: float, robust: float, seed: int, diverged: bool = False) -> None:
    u = difficulty(seed) + 0.5 / N
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "label", "clean_correct", "robust", "broken_by"])
        for i in range(N):
            cells = ["", "", ""] if diverged else [int(u[i] < clean), int(u[i] < robust), "" if u[i] < robust else "pgd"]
            writer.writerow([i, i % 10, *cells])


def write_results(tmp_path, health: dict | None = None):
    """Every model of ``MODELS`` on seeds 0-2 with its samples.csv; ``health``: extra eval.json keys of
    some (train, compression, finetune, seed)."""
    recs, outcomes = [], []
    for seed in (0, 1, 2):
        for (train, compression, finetune), (clean, robust) in MODELS.items():
            # every seed a little different, so the seeds vary as real ones do
            clean_s, robust_s = clean + 0.01 * (seed - 1), robust + 0.01 * (seed - 1)
            extra = (health or {}).get((train, compression, finetune, seed), {})
            recs.append(make_record(train, compression, finetune, seed, clean=clean_s, robust=robust_s, **extra))
            outcomes.append((clean_s, robust_s, seed))
    paths = write_records(tmp_path, recs)
    for path, (clean, robust, seed) in zip(paths, outcomes):
        write_samples(path.parent / "samples.csv", clean, robust, seed)
    return collect.collect_metrics(paths), paths


@pytest.fixture
def results(tmp_path):
    return write_results(tmp_path)


def verdicts(table: pd.DataFrame) -> dict:
    return dict(zip(table["claim"], table["verdict"]))


def test_claims_are_decided_by_the_paired_statistic(results):
    df, _ = results
    table = claims_table(df, 0.8, 8, margin=3.0, n_boot=500)
    assert list(table["claim"]) == [c.key for c in CLAIMS]
    v = verdicts(table)
    assert v["C1"] == "confirmed" and v["C2"] == "confirmed" and v["C3"] == "confirmed"
    assert v["C4"] == "confirmed"  # 0.5 points apart, paired: inside the 3-point margin
    assert v["C5"] == "confirmed" and v["C6"] == "confirmed" and v["C7"] == "confirmed"
    assert v["C8"] == "confirmed" and v["C9"] == "confirmed"
    assert v["C10"] == "refuted"  # 10 points below f_rb: outside the margin
    assert v["C12"] == NOT_RUN and v["C11"] == NOT_RUN  # T_ad(f_rb^p), T_ad(f_st^q) were not run
    assert v["X1"] == "refuted"  # from scratch is 2 points more robust here
    assert v["X3"] == "confirmed" and v["X4"] == "confirmed"
    c1 = table.set_index("claim").loc["C1"]
    assert c1["diff"] == pytest.approx(55.0, abs=0.5) and c1["ci_low"] > 50 and c1["n_seeds"] == 3
    assert c1["mcnemar_p"] < 1e-6 and c1["n_samples"] == N
    assert verdicts(claims_table(df, 0.8, 8, margin=0.1, n_boot=500))["C4"] == "refuted"


def samples_of(df: pd.DataFrame, train: str, compression: str, finetune: str, seed: int) -> Path:
    row = df[(df["train"] == train) & (df["compression"] == compression) & (df["finetune"] == finetune)
             & (df["seed"] == seed)]
    return Path(row["path"].iloc[0]).parent / "samples.csv"


def test_a_diverged_seed_or_a_missing_samples_file_is_said_not_scored(results):
    df, _ = results
    write_samples(samples_of(df, "rb", "dense", "none", 1), 0.8, 0.6, 1, diverged=True)
    v = verdicts(claims_table(df, 0.8, 8, margin=3.0, n_boot=200))
    assert v["C1"] == "diverged" and v["C3"] == "confirmed"  # C3 does not involve f_rb
    samples_of(df, "st", "dense", "ad", 0).unlink()
    assert verdicts(claims_table(df, 0.8, 8, margin=3.0, n_boot=200))["C3"].startswith(NO_SAMPLES)


def test_a_hand_edited_samples_file_is_refused_naming_it(results):
    df, _ = results
    assert verdicts(claims_table(df, 0.8, 8, margin=3.0, n_boot=50))["C1"] == "confirmed"
    path = samples_of(df, "rb", "dense", "none", 1)
    original = path.read_text()
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    wrong_clean = table.index[table["clean_correct"] == "0"][:3]
    table.loc[wrong_clean, "robust"] = "1"  # robust > clean: more robust in the claims than in Table 3
    table.to_csv(path, index=False)
    with pytest.raises(ValueError, match="robust 1 but clean_correct 0") as err:
        claims_table(df, 0.8, 8, margin=3.0, n_boot=50)
    assert str(path) in str(err.value)
    table = pd.read_csv(io.StringIO(original), dtype=str, keep_default_na=False)
    right = table.index[table["robust"] == "1"][:30]
    table.loc[right, "robust"] = "0"  # consistent in itself, but 1.5 points below its eval.json
    table.to_csv(path, index=False)
    with pytest.raises(ValueError, match="robust_acc") as err:
        claims_table(df, 0.8, 8, margin=3.0, n_boot=50)
    assert str(path) in str(err.value)
    table = pd.read_csv(io.StringIO(original), dtype=str, keep_default_na=False)
    table.loc[5, "label"] = str((int(table.loc[5, "label"]) + 1) % 10)  # another test set
    table.to_csv(path, index=False)
    with pytest.raises(ValueError, match="different labels") as err:
        claims_table(df, 0.8, 8, margin=3.0, n_boot=50)
    assert str(path) in str(err.value)


def test_the_controls_table_puts_each_arm_beside_t_ad(results, tmp_path):
    df, _ = results
    table = controls_table(df)
    pruned = table[table["compression"] == "prune-0.8"]
    assert list(pruned["finetune"]) == ["ad", "fgsm", "trades", "scratch"]
    scratch = pruned.set_index("finetune").loc["scratch"]
    assert scratch["start"] == "random init" and scratch["budget"] == "fine-tuning" and scratch["objective"] == "PGD"
    assert pruned.set_index("finetune").loc["ad"]["start"] == "f_st weights"
    assert scratch["n"] == 3 and scratch["robust_mean"] == pytest.approx(52.0)
    rows = df[(df["compression"] == "prune-0.8") & (df["finetune"] == "scratch")]
    assert scratch["train_wall_min_mean"] == pytest.approx(rows["finetune_wall_time_s"].mean() / 60)
    assert table[table["compression"] == "ptq-int8"].empty  # no control arm on the PTQ models here
    written = render.write_tables(df, tmp_path / "tables", 0.8, 8, margin=3.0)
    names = {p.name for p in written}
    assert {"controls.md", "controls.tex", "claims.md", "claims.tex", "claims.csv"} <= names
    md = (tmp_path / "tables" / "claims.md").read_text(encoding="utf-8")
    assert "| C1 " in md and "confirmed" in md and "within ±3 points" in md
    assert "random init" in (tmp_path / "tables" / "controls.md").read_text(encoding="utf-8")
    no_controls = df[~df["finetune"].isin(["scratch", "fgsm", "trades"])]
    assert controls_table(no_controls).empty


def test_a_comparison_with_a_collapsed_seed_is_said_collapsed_never_decided(tmp_path):
    """f_rb collapsed in training on seed 1: every claim about f_rb, or about a model built on it (its PTQ
    model), says "collapsed" with the counts; the scratch arm collapsed on seed 0 by its predictions."""
    reason = {"collapsed": True, "collapsed_reason": "epoch 20: training accuracy 0.100, chance is 0.100"}
    df, _ = write_results(tmp_path, {
        ("rb", "dense", "none", 1): reason,
        ("rb", "ptq-int8", "none", 1): {"collapsed_upstream": ["train_base"]},
        ("rb", "ptq-int8", "st", 1): {"collapsed_upstream": ["train_base"]},
        ("st", "prune-0.8", "scratch", 0): {"collapsed": True, "collapsed_reason": "predicts class 3 for 95.0%"}})
    table = claims_table(df, 0.8, 8, margin=3.0, n_boot=200).set_index("claim")
    c1 = table.loc["C1"]  # f_rb vs f_st
    assert c1["verdict"] == "collapsed" and (c1["a_collapsed"], c1["b_collapsed"]) == (1, 0) and pd.isna(c1["diff"])
    c7 = table.loc["C7"]  # f_rb^q (built on f_rb) vs f_rb: both carry the mark of seed 1
    assert c7["verdict"] == "collapsed" and (c7["a_collapsed"], c7["b_collapsed"]) == (1, 1)
    assert table.loc["C9", "verdict"] == "collapsed"  # T_st(f_rb^q) vs f_rb^q, both built on f_rb
    assert table.loc["X1", "verdict"] == "collapsed" and table.loc["X1", "b_collapsed"] == 1
    assert table.loc["C3", "verdict"] == "confirmed" and table.loc["C3", "a_collapsed"] == 0  # f_rb not in it
    render.write_tables(df, tmp_path / "tables", 0.8, 8, margin=3.0)
    md = (tmp_path / "tables" / "claims.md").read_text(encoding="utf-8")
    assert "collapsed (A 1/3, B 0/3)" in md and "collapsed (A 1/3, B 1/3)" in md
    controls = controls_table(df).set_index("finetune")
    assert controls.loc["scratch", "robustness"] == "collapsed (1/3)" and controls.loc["scratch", "collapsed"] == 1
    assert "collapsed (1/3)" in (tmp_path / "tables" / "controls.md").read_text(encoding="utf-8")
