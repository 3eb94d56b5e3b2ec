"""Tests for the advfine.report package (collect, labels, tables, render, figures) on a small
synthetic set of eval.json files with known numbers."""
from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from record_factory import eval_record, lineage_entry

from advfine.pipeline import vocab
from advfine.pipeline.records import NODE_KEYS, write_deployment_record
from advfine.report import audit_table, collect, figures, html_tables, labels, render, stats, tables

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PDF_MAGIC = b"%PDF-"

# Hand-picked numbers for one Table 3 / Table 5 cell: T_ad(f_st^p) at sparsity 0.8.
#   test:   80, 84 -> mean 82.00, sample std sqrt((2^2 + 2^2) / 1) = 2.83
#   robust: 70, 76 -> mean 73.00, sample std sqrt((3^2 + 3^2) / 1) = 4.24
FIXED = {("st", "prune-0.8", "ad", 0): (0.80, 0.70), ("st", "prune-0.8", "ad", 1): (0.84, 0.76),
         # f_st (dense, no fine-tuning): 90, 91 / 4, 6
         ("st", "dense", "none", 0): (0.90, 0.04), ("st", "dense", "none", 1): (0.91, 0.06)}


def parse_compression(compression):
    if compression == "dense":
        return "dense", None
    method, _, level = compression.partition("-")
    return method, (int(level[3:]) if level.startswith("int") else float(level))


# Stage costs, chosen so the computational-gains table has round numbers:
#   rb train_base: 118 min (seed 0) / 120 min (seed 1), 1e15 MACs, adversarial
#   st train_base: 10 min, 5e13 MACs; compress: 1 s (prune) / 2 s (PTQ), no MACs to speak of
#   finetune ad: 14 min after dense, 10 min after pruning, 12 min after PTQ; 1.5e14 / 1e14 MACs
FT_MINUTES = {"dense": 14.0, "prune": 10.0, "ptq": 12.0, "qat": 12.0}


def make_stages(train, method, finetune, seed):
    def stage(name, seconds, macs, adversarial):
        return lineage_entry(name, wall_time_s=seconds, estimated_macs=macs, adversarial=adversarial,
                             device="cuda", peak_rss_mb=None, cpu_time_s=seconds)

    if train == "rb":
        stages = [stage("train_base", 60.0 * (118 + 2 * seed), 1e15, True)]
    else:
        stages = [stage("train_base", 600.0, 5e13, False)]
    if method != "dense":
        stages.append(stage("compress", {"prune": 1.0}.get(method, 2.0), 0 if method == "prune"
                            else 2.5e9, method == "qat" and train == "rb"))
    if finetune != "none":
        ad = finetune == "ad"
        macs = (1.5e14 if method == "dense" else 1e14) if ad else 2e13
        stages.append(stage("finetune", 60.0 * FT_MINUTES.get(method, 10.0), macs, ad))
    return stages


def make_record(train, compression, finetune, seed, clean=None, robust=None, **over):
    """The eval.json (as its writer makes it) of one node; ``over``: keys replaced in it."""
    method, level = parse_compression(compression)
    if clean is None:
        clean, robust = FIXED.get((train, compression, finetune, seed), (None, None))
    if clean is None:  # arbitrary but deterministic
        h = sum(map(ord, f"{train}{compression}{finetune}")) % 40
        clean, robust = 0.5 + h / 100 + seed / 100, 0.2 + h / 200 + seed / 50
    attack = {"eps": 0.1, "step_size": 0.01, "steps": 40, "eps_space": "paper_faithful", "eps_pixel": 0.05,
              "norm": "linf"}
    rec = eval_record(
        experiment="fmnist_cnn8", dataset="fashion_mnist", arch="cnn8", seed=seed,
        train=train, compression=compression, method=method, level=level,
        finetune=finetune, clean_acc=clean, robust_acc=robust, n_test=10000,
        params=1000, macs=5000, checkpoint_bytes=4000, weight_bytes=3000,
        device="cpu", eval_wall_time_s=1.5,
        stages=make_stages(train, method, finetune, seed),
        provenance={"config_hash": "abc123", "git_commit": "deadbeef", "versions": {}},
        attack=attack,
    ).to_json()
    rec.update(over)
    return rec


def synthetic_records():
    recs = []
    for seed in (0, 1):
        for train in ("st", "rb"):
            recs.append(make_record(train, "dense", "none", seed))
            for comp in ("prune-0.5", "prune-0.8", "ptq-int8", "ptq-int4"):
                for ft in ("none", "st", "ad"):
                    if (train, comp, ft) == ("rb", "prune-0.8", "st"):
                        continue  # missing combination -> n/a
                    if (train, comp, ft) == ("rb", "ptq-int8", "none") and seed == 1:
                        continue  # single seed -> std 0.00, n = 1
                    recs.append(make_record(train, comp, ft, seed))
        recs.append(make_record("st", "dense", "ad", seed))  # T_ad(f_st)
    return recs


def qat_records():
    """Robust models with QAT at INT16..INT1 (Figure 4) and one adversarially fine-tuned INT8."""
    recs = [make_record("rb", f"qat-int{b}", "none", s) for b in (16, 8, 4, 2, 1) for s in (0, 1)]
    recs.append(make_record("rb", "qat-int8", "ad", 0, clean=0.88, robust=0.81))
    return recs


# Not an eval.json key: a record's timed models, which write_records puts into the run's deployment.json.
TIMED = "_deployment"


def write_records(dirpath: Path, recs) -> list[Path]:
    """Each record as an eval.json; the timed models of those that have them (``with_compute``) into
    ``dirpath``/deployment.json."""
    paths, timed = [], []
    for i, rec in enumerate(recs):
        rec = dict(rec)
        models = rec.pop(TIMED, None)
        if models is not None:
            timed.append({**{k: rec[k] for k in NODE_KEYS}, "checkpoint_bytes": 4000, "models": models})
        p = dirpath / f"m{i:03d}" / "eval.json"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps(rec))
        paths.append(p)
    if timed:
        write_deployment_record(dirpath / "deployment.json", {}, timed, {})
    return paths


def frame(tmp_path, recs) -> pd.DataFrame:
    paths = write_records(tmp_path, recs)
    deployment = tmp_path / "deployment.json"
    return collect.collect_metrics(paths, deployment if deployment.exists() else None)


@pytest.fixture
def paths(tmp_path):
    return write_records(tmp_path / "evals", synthetic_records())


@pytest.fixture
def df(paths):
    return collect.collect_metrics(paths)


@pytest.fixture
def df_qat(df, tmp_path):
    return pd.concat([df, frame(tmp_path / "qat", qat_records())], ignore_index=True)


# ----------------------------------------------------------------------------- collect_metrics


def test_collect_metrics_columns_rows_and_sorting(df, paths):
    assert len(df) == len(paths) == 2 * (2 + 4 * 3 * 2 + 1) - 2 - 1
    expected = ["experiment", "dataset", "arch", "seed", "train", "compression", "method", "level",
                "finetune", "clean_acc", "robust_acc", "n_test", "params", "macs",
                "checkpoint_bytes", "weight_bytes", "device", "eval_wall_time_s",
                "diverged", "collapsed", "collapsed_reason", "constant_predictions", "robust_acc_pgd",
                "robust_acc_whitebox", "robust_acc_before_escalation",
                *[f"robust_acc_after_{a}" for a in vocab.ATTACKS], *[f"broken_by_{a}" for a in vocab.ATTACKS],
                *[f"audit_{c}" for c in vocab.AUDIT_CHECKS], "int8_robust_acc",
                "precision", "peak_rss_mb",
                "int8_clean_acc", "int8_fake_quant_clean_acc", "int8_agreement",
                "int8_robust_images", "int8_fake_quant_robust_acc",
                *[f"{prefix}{col}" for prefix in ("", "float_twin_", "int8_")
                  for col in ("latency_ms", "latency_iqr_ms", "latency_min_ms", "latency_max_ms",
                              "throughput_ips", "memory_bytes")],
                "latency_batch", "latency_threads", "latency_rounds", "int8_model_bytes",
                "audit_flags", "collapsed_upstream",
                *[f"{prefix}_{what}" for prefix in ("obtain", "eval")
                  for what in ("wall_h", "cpu_h", "gpu_h", "train_macs", "energy_j", "energy_method")],
                "train_base_wall_time_s", "compress_wall_time_s", "finetune_wall_time_s",
                "train_base_estimated_macs", "compress_estimated_macs",
                "finetune_estimated_macs", "train_base_adversarial", "compress_adversarial",
                "finetune_adversarial", "train_base_device", "compress_device", "finetune_device",
                "train_base_peak_rss_mb", "compress_peak_rss_mb", "finetune_peak_rss_mb",
                *[f"{s}_{f}" for f in ("cpu_time_s", "gpu_time_s", "energy_j")
                  for s in ("train_base", "compress", "finetune")],
                "git_commit", "config_hash", "attack_eps", "attack_step_size", "attack_steps",
                "attack_eps_space", "attack_eps_pixel", "attack_norm", "path"]
    assert list(df.columns) == expected
    key = ["train", "method", "level", "finetune", "seed"]
    assert df[key].equals(df.sort_values(key, na_position="first", kind="mergesort")[key]
                          .reset_index(drop=True))
    # Same result whatever order the files are given in.
    pd.testing.assert_frame_equal(collect.collect_metrics(list(reversed(paths))), df)
    dense = df[(df.method == "dense") & (df.finetune == "none") & (df.train == "st")].iloc[0]
    assert math.isnan(dense["level"])
    assert math.isnan(dense["compress_wall_time_s"]) and math.isnan(dense["finetune_wall_time_s"])
    assert dense["train_base_wall_time_s"] == 600.0
    assert dense["train_base_estimated_macs"] == 5e13
    assert not dense["train_base_adversarial"]
    assert dense["train_base_device"] == "cuda" and pd.isna(dense["finetune_adversarial"])
    assert dense["git_commit"] == "deadbeef" and dense["config_hash"] == "abc123"
    assert dense["attack_eps_space"] == "paper_faithful" and dense["attack_eps_pixel"] == 0.05
    pq = df[(df.method == "ptq") & (df.finetune == "ad")].iloc[0]
    assert pq["compress_wall_time_s"] == 2.0 and pq["finetune_wall_time_s"] == 720.0
    assert bool(pq["finetune_adversarial"]) and pq["finetune_estimated_macs"] == 1e14
    assert str(df["finetune_adversarial"].dtype) == "boolean"


def test_new_method_dataset_arch_values_load(tmp_path):
    recs = [make_record("rb", "qat-int1", "none", 0, dataset="cifar10", arch="resnet18",
                        experiment="c10")]
    row = frame(tmp_path, recs).iloc[0]
    assert (row["method"], row["level"], row["dataset"], row["arch"]) == ("qat", 1.0, "cifar10",
                                                                          "resnet18")
    assert bool(row["compress_adversarial"])


@pytest.mark.parametrize("field, value", [("estimated_macs", "1e15"), ("adversarial", "yes"),
                                          ("adversarial", 1), ("device", 0),
                                          ("estimated_macs", True)])
def test_mistyped_stage_fields_name_file_and_field(tmp_path, field, value):
    rec = make_record("st", "dense", "none", 0)
    rec["stages"][0][field] = value
    p = write_records(tmp_path, [rec])[0]
    with pytest.raises(collect.MetricsFileError) as exc:
        collect.collect_metrics([p])
    assert str(p) in str(exc.value) and field in str(exc.value)


def test_missing_file_names_it(tmp_path):
    missing = tmp_path / "nope" / "eval.json"
    with pytest.raises(FileNotFoundError, match="nope"):
        collect.collect_metrics([missing])


def test_invalid_json_names_file(tmp_path, paths):
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(collect.MetricsFileError, match="broken.json"):
        collect.collect_metrics(paths[:2] + [bad])


def test_missing_key_names_file_and_key(tmp_path):
    rec = make_record("st", "dense", "none", 0)
    del rec["robust_acc"]
    p = write_records(tmp_path, [rec])[0]
    with pytest.raises(collect.MetricsFileError) as exc:
        collect.collect_metrics([p])
    assert str(p) in str(exc.value) and "'robust_acc'" in str(exc.value)


def test_percent_instead_of_fraction_is_rejected(tmp_path):
    p = write_records(tmp_path, [make_record("st", "dense", "none", 0, clean=90.5, robust=4.0)])[0]
    with pytest.raises(collect.MetricsFileError, match="clean_acc"):
        collect.collect_metrics([p])


def test_duplicate_model_and_duplicate_stage_are_rejected(tmp_path):
    recs = [make_record("st", "ptq-int8", "ad", 0), make_record("st", "ptq-int8", "ad", 0)]
    with pytest.raises(collect.MetricsFileError, match="m001"):
        collect.collect_metrics(write_records(tmp_path / "a", recs))
    rec = make_record("st", "ptq-int8", "ad", 0)
    rec["stages"].append(dict(rec["stages"][-1]))
    with pytest.raises(collect.MetricsFileError, match="'finetune' twice"):
        collect.collect_metrics(write_records(tmp_path / "b", [rec]))


# ----------------------------------------------------------------------------- labels and cells


def test_labels_in_paper_notation():
    assert vocab.model_label("st") == "f_st"
    assert vocab.model_label("rb", "prune") == "f_rb^p"
    assert vocab.model_label("st", "dense", "ad") == "T_ad(f_st)"
    assert vocab.model_label("st", "prune", "st") == "T_st(f_st^p)"
    assert vocab.model_label("st", "ptq", "ad", quant_kind=True) == "T_ad(f_st^q) (PTQ)"
    assert vocab.model_label("rb", "qat", "ad", quant_kind=True) == "T_ad(f_rb^q) (QAT)"
    assert labels.level_label("ptq", 16.0) == "INT16" and labels.level_label("qat", 1) == "INT1"


def test_latex_labels_and_escaping():
    assert labels.latex_model_label("f_st") == "$f_{st}$"
    assert labels.latex_model_label("f_rb^p") == "$f_{rb}^{p}$"
    assert labels.latex_model_label("T_ad(f_st)") == r"$\mathcal{T}_{ad}(f_{st})$"
    assert labels.latex_model_label("T_ad(f_rb^q) (QAT)") == r"$\mathcal{T}_{ad}(f_{rb}^{q})$ (QAT)"
    assert labels.latex_model_label("my_model & 50%") == r"my\_model \& 50\%"
    assert labels.latex_escape(r"a_b^c{d}~\#$") == (r"a\_b\textasciicircum{}c\{d\}"
                                                    r"\textasciitilde{}\textbackslash{}\#\$")


def test_figure_labels_are_mathtext_of_the_paper_notation():
    assert vocab.math_model_label("st") == "$f_{st}$"
    assert vocab.math_model_label("rb", "prune") == "$f_{rb}^{p}$"
    assert vocab.math_model_label("st", "ptq", "ad") == r"$\mathcal{T}_{ad}(f_{st}^{q})$ (PTQ)"
    assert vocab.math_model_label("rb", "qat", "st") == r"$\mathcal{T}_{st}(f_{rb}^{q})$ (QAT)"
    # a label outside the notation stays plain text, its $ escaped
    assert vocab.mathtext_label("S_ad^ft(arch f^p)") == "S_ad^ft(arch f^p)"
    assert vocab.mathtext_label("model $1") == r"model \$1"
    # matplotlib parses every label the figures use
    from matplotlib.mathtext import MathTextParser
    parser = MathTextParser("path")
    for train in ("st", "rb"):
        for method in ("dense", "prune", "ptq", "qat"):
            for finetune in ("none", "st", "ad"):
                math = vocab.math_model_label(train, method, finetune).split(" (")[0]
                parser.parse(math)


def test_number_formats():
    assert labels.format_cell(82.0, 2.8284271) == "82.00 ± 2.83"
    assert labels.format_cell(float("nan"), float("nan")) == "n/a"
    assert labels.format_minutes(118.0, 1.414) == "118.00 ± 1.41"
    assert labels.format_minutes(0.0123, 0.0004) == "0.0123 ± 0.0004"
    assert labels.format_macs(1.5e14) == "150 TMAC" and labels.format_macs(2.34e15) == "2.34 PMAC"
    assert labels.format_macs(0) == "0 MAC" and labels.format_macs(float("nan")) == "n/a"
    assert labels.format_ratio(14 / 119) == "0.12" and labels.format_ratio(0.0031) == "3.1e-03"
    assert labels.format_ratio(float("nan")) == "n/a"


# ----------------------------------------------------------------------------- tables


def test_table2_rows_columns_values(df):
    t = tables.table2(df)
    assert list(t["model"]) == ["f_st", "f_rb", "T_ad(f_st)"]
    assert list(t.columns) == ["experiment", "dataset", "arch", "model", "n", "test",
                               "robustness", "test_mean", "test_std", "robust_mean", "robust_std",
                               "diverged", "collapsed", "flagged"]
    f_st = t.iloc[0]
    assert f_st["test"] == "90.50 ± 0.71" and f_st["robustness"] == "5.00 ± 1.41"
    assert f_st["n"] == 2
    assert f_st["test_mean"] == pytest.approx(90.5) and f_st["robust_std"] == pytest.approx(2**0.5)
    # T_ad(f_st) is always a row: n/a when it was not run
    no_tad = tables.table2(df[~((df.method == "dense") & (df.finetune == "ad"))])
    assert list(no_tad["model"]) == ["f_st", "f_rb", "T_ad(f_st)"]
    assert no_tad.iloc[2]["test"] == "n/a" and no_tad.iloc[2]["n"] == 0


def _cell(t, model, perf):
    row = t[(t["model"] == model) & (t["performance"] == perf)]
    assert len(row) == 1
    return row.iloc[0]


def test_table3_cells_na_and_single_seed(df):
    t = tables.table3(df, 0.8, 8)
    assert tables.table4 is tables.table3
    assert list(t["model"]) == ["f_st^p", "f_st^p", "f_st^q", "f_st^q",
                                "f_rb^p", "f_rb^p", "f_rb^q", "f_rb^q"]
    assert list(t["performance"]) == ["test", "robustness"] * 4
    r = _cell(t, "f_st^p", "test")
    assert r["ad"] == "82.00 ± 2.83" and r["ad_n"] == 2
    assert r["ad_mean"] == pytest.approx(82.0) and r["ad_std"] == pytest.approx(8**0.5)
    assert _cell(t, "f_st^p", "robustness")["ad"] == "73.00 ± 4.24"
    # missing combination -> n/a, NaN numbers, n = 0
    miss = _cell(t, "f_rb^p", "test")
    assert miss["st"] == "n/a" and miss["st_n"] == 0 and math.isnan(miss["st_mean"])
    assert _cell(t, "f_rb^p", "robustness")["st"] == "n/a"
    # single seed -> std 0.00
    one = _cell(t, "f_rb^q", "test")
    assert one["none"].endswith(" ± 0.00") and one["none_n"] == 1 and one["none_std"] == 0.0
    # a level that was never run -> everything n/a, rows still there
    t9 = tables.table3(df, 0.9, 2)
    assert len(t9) == 8 and (t9[["none", "st", "ad"]] == "n/a").all().all()


def test_table5_rows_and_qat(df, df_qat, tmp_path):
    t = tables.table5(df, 0.8, 8)
    assert tables.table6 is tables.table5
    assert list(t["model"]) == ["f_st", "T_ad(f_st^p)", "T_ad(f_st^q) (PTQ)",
                                "f_rb", "T_ad(f_rb^p)", "T_ad(f_rb^q) (PTQ)", "T_ad(f_rb^q) (QAT)"]
    assert t.iloc[1]["test"] == "82.00 ± 2.83" and t.iloc[1]["n"] == 2
    assert t.iloc[-1]["test"] == "n/a" and t.iloc[-1]["n"] == 0  # no QAT run
    # the QAT row is T_ad of method qat at the PTQ bit width (QAT models without T_ad don't count)
    t2 = tables.table5(df_qat, 0.8, 8)
    assert len(t2) == 7 and t2.iloc[-1]["test"] == "88.00 ± 0.00" and t2.iloc[-1]["n"] == 1
    assert tables.table5(df_qat, 0.8, 4).iloc[-1]["test"] == "n/a"
    # an unknown method is ignored; a standard QAT model adds its row after the PTQ one
    extra = [make_record("rb", "lowrank-0.5", "ad", 0),
             make_record("st", "qat-int8", "ad", 0, clean=0.70, robust=0.60)]
    t3 = tables.table5(pd.concat([df_qat, frame(tmp_path / "x", extra)], ignore_index=True), 0.8, 8)
    assert list(t3["model"])[:4] == ["f_st", "T_ad(f_st^p)", "T_ad(f_st^q) (PTQ)",
                                     "T_ad(f_st^q) (QAT)"]
    assert t3.iloc[3]["robustness"] == "60.00 ± 0.00" and len(t3) == 8
    assert len(tables.table3(df_qat, 0.8, 8)) == 8


def test_levels_per_dataset(df):
    t = tables.table3(df, {"fashion_mnist": 0.8, "cifar10": 0.5}, {"fashion_mnist": 8})
    assert _cell(t, "f_st^p", "test")["ad"] == "82.00 ± 2.83"
    t = tables.table3(df, {"cifar10": 0.5}, 8)  # dataset not in mapping -> n/a
    assert (t[t["model"] == "f_st^p"][["none", "st", "ad"]] == "n/a").all().all()


def _gain(t, model):
    row = t[t["model"] == model]
    assert len(row) == 1
    return row.iloc[0]


def test_computational_gains_from_recorded_stages(df):
    t = tables.computational_gains(df, 0.8, 8)
    assert list(t["model"]) == ["f_rb", "T_ad(f_st)", "T_ad(f_st^p)", "T_ad(f_st^q) (PTQ)"]
    assert list(t["adversarial_stage"]) == ["train_base", "finetune", "finetune", "finetune"]
    rb = _gain(t, "f_rb")  # 118 and 120 minutes of adversarial training
    assert rb["adv_wall_min"] == "119.00 ± 1.41" and rb["n"] == 2
    assert rb["adv_time_ratio"] == pytest.approx(1.0) and rb["adv_macs"] == "1 PMAC"
    assert rb["lineage_wall_min_mean"] == pytest.approx(119.0) and rb["device"] == "cuda"
    dense = _gain(t, "T_ad(f_st)")  # 14 min fine-tuning after 10 min standard training
    assert dense["adv_wall_min"] == "14.00 ± 0.00"
    assert dense["adv_time_ratio"] == pytest.approx(14 / 119)
    assert dense["adv_macs"] == "150 TMAC" and dense["adv_macs_ratio"] == pytest.approx(0.15)
    assert dense["lineage_wall_min_mean"] == pytest.approx(24.0)
    assert dense["lineage_time_ratio"] == pytest.approx(24 / 119)
    assert dense["lineage_macs_mean"] == pytest.approx(2e14)
    pruned = _gain(t, "T_ad(f_st^p)")  # 10 + 1 s pruning + 10 min
    assert pruned["adv_wall_min_mean"] == pytest.approx(10.0)
    assert pruned["lineage_wall_min_mean"] == pytest.approx(20 + 1 / 60)
    assert pruned["lineage_macs_mean"] == pytest.approx(1.5e14)  # pruning's 0 MACs are known
    ptq = _gain(t, "T_ad(f_st^q) (PTQ)")
    assert ptq["adv_wall_min_mean"] == pytest.approx(12.0)
    assert ptq["lineage_macs_mean"] == pytest.approx(5e13 + 2.5e9 + 1e14)
    # levels that were not run -> n/a rows, f_rb still there
    t2 = tables.computational_gains(df, 0.9, 2)
    assert _gain(t2, "T_ad(f_st^p)")["adv_wall_min"] == "n/a"
    assert _gain(t2, "T_ad(f_st^q) (PTQ)")["device"] == "n/a"
    assert _gain(t2, "f_rb")["adv_wall_min"] == "119.00 ± 1.41"


def test_table_names_per_dataset():
    assert vocab.table_names("fashion_mnist") == [
        "table2_baselines", "table3_compressed", "table5_adversarial_finetuning",
        "computational_gains", "compute", "evaluation_audit", "controls", "efficiency",
        "efficiency_stages", "claims"]
    assert vocab.table_names("digits") == vocab.table_names("fashion_mnist")
    assert vocab.table_names("cifar10") == [
        "table2_baselines", "table4_compressed", "table6_adversarial_finetuning",
        "computational_gains", "compute", "evaluation_audit", "controls", "efficiency",
        "efficiency_stages", "claims"]
    assert all(vocab.table_names(d)[-1] == "claims" for d in ("digits", "cifar10", "other"))


# ----------------------------------------------------------------------------- compute table


def with_compute(rec, latency=None, eval_peak=None, stage_peaks=None, int8=None, batch=256,
                 threads=2, precision="fp32"):
    """A record with measured latency (its deployment entry) and memory: ``stage_peaks`` = peak_rss_mb of each
    entry of "stages", in order (None: not measured); ``int8``'s latency and bytes go to the deployment entry."""
    int8 = dict(int8) if int8 is not None else None
    timed = {"model": {"latency_ms": latency, "batch_size": batch, "threads": threads}}
    if int8 is not None:
        timed["int8"] = {"latency_ms": int8.pop("latency_ms"), "disk_bytes": int8.pop("model_bytes"),
                         "batch_size": batch, "threads": threads}
    rec |= {"peak_rss_mb": eval_peak, "precision": precision, "int8": int8, TIMED: timed}
    for st, peak in zip(rec["stages"], stage_peaks or []):
        if peak is not None:
            st["peak_rss_mb"] = peak
    return rec


def int8_record(clean, fake, latency, agreement=0.98, model_bytes=1500):
    return {"clean_acc": clean, "fake_quant_clean_acc": fake, "agreement": agreement,
            "latency_ms": latency, "model_bytes": model_bytes}


def compute_records():
    """f_st (latency 10/12 ms), its PTQ INT8 node at half the latency with a real INT8 model at a
    quarter, T_ad(f_st^p) at twice the latency, f_rb (20 ms) and its PTQ INT8 node (10 ms)."""
    return [
        with_compute(make_record("st", "dense", "none", 0), 10.0, 300.0, [500.0]),
        with_compute(make_record("st", "dense", "none", 1), 12.0, 310.0, [520.0]),
        with_compute(make_record("st", "ptq-int8", "none", 0), 5.5, 700.0, [500.0, 450.0],
                     int8_record(0.89, 0.90, 2.75)),
        with_compute(make_record("st", "ptq-int8", "none", 1), 5.5, 720.0, [520.0, 450.0],
                     int8_record(0.91, 0.92, 2.75)),
        with_compute(make_record("st", "prune-0.8", "ad", 0), 22.0, 600.0, [500.0, 400.0, 800.0]),
        with_compute(make_record("rb", "dense", "none", 0), 20.0, 300.0, [900.0]),
        with_compute(make_record("rb", "ptq-int8", "ad", 0), 10.0, 300.0, [900.0, 450.0, None]),
    ]


def _model(t, model, compression_level=None):
    row = t[t["model"] == model]
    if compression_level is not None:
        row = row[row["compression_level"] == compression_level]
    assert len(row) == 1
    return row.iloc[0]


def test_collect_metrics_reads_latency_memory_and_int8(tmp_path):
    c = frame(tmp_path, compute_records())
    pq = c[(c.train == "st") & (c.method == "ptq") & (c.seed == 0)].iloc[0]
    assert pq["latency_ms"] == 5.5 and pq["latency_batch"] == 256 and pq["latency_threads"] == 2
    assert pq["peak_rss_mb"] == 700.0 and pq["precision"] == "fp32"
    assert (pq["int8_clean_acc"], pq["int8_fake_quant_clean_acc"]) == (0.89, 0.90)
    assert pq["int8_agreement"] == 0.98 and pq["int8_latency_ms"] == 2.75
    assert pq["int8_model_bytes"] == 1500
    assert (pq["train_base_peak_rss_mb"], pq["compress_peak_rss_mb"]) == (500.0, 450.0)
    assert math.isnan(pq["finetune_peak_rss_mb"])
    dense = c[(c.train == "st") & (c.method == "dense")].iloc[0]
    assert math.isnan(dense["int8_clean_acc"]) and pd.isna(dense["int8_model_bytes"])
    rb_q = c[(c.train == "rb") & (c.method == "ptq")].iloc[0]
    assert math.isnan(rb_q["finetune_peak_rss_mb"])  # the stage did not record it
    assert str(c["latency_batch"].dtype) == "Int64" and c["latency_ms"].dtype == float
    assert c["train_base_peak_rss_mb"].dtype == float
    # null = not measured (e.g. latency repeats 0): loads as NaN
    rec = with_compute(make_record("st", "dense", "none", 0), None, None)
    row = frame(tmp_path / "null", [rec]).iloc[0]
    assert math.isnan(row["latency_ms"]) and math.isnan(row["peak_rss_mb"])
    assert math.isnan(row["int8_latency_ms"])


@pytest.mark.parametrize("key, value, named", [
    ("peak_rss_mb", "512", "'peak_rss_mb'"),
    ("precision", 16, "'precision'"), ("int8", [0.9], "'int8'"),
    ("int8", {"clean_acc": 89.0}, "'int8.clean_acc'"),
    ("int8", {"agreement": "all"}, "'int8.agreement'"),
])
def test_mistyped_compute_keys_name_file_and_key(tmp_path, key, value, named):
    rec = with_compute(make_record("st", "ptq-int8", "none", 0), 5.0, 300.0,
                       int8=int8_record(0.9, 0.9, 2.0))
    rec[key] = value
    p = write_records(tmp_path, [rec])[0]
    with pytest.raises(collect.MetricsFileError) as exc:
        collect.collect_metrics([p])
    assert str(p) in str(exc.value) and named in str(exc.value)


@pytest.mark.parametrize("model, key, value", [
    ("model", "latency_ms", "3.5"), ("model", "latency_ms", True), ("model", "latency_ms", -1.0),
    ("model", "batch_size", 256.0), ("model", "threads", 0), ("int8", "latency_ms", "2"),
    ("int8", "disk_bytes", 1.5),
])
def test_mistyped_deployment_values_name_file_and_key(tmp_path, model, key, value):
    rec = with_compute(make_record("st", "ptq-int8", "none", 0), 5.0, 300.0,
                       int8=int8_record(0.9, 0.9, 2.0))
    rec[TIMED][model][key] = value
    p = write_records(tmp_path, [rec])[0]
    with pytest.raises(collect.MetricsFileError) as exc:
        collect.collect_metrics([p], tmp_path / "deployment.json")
    assert "deployment.json" in str(exc.value) and f"'nodes[0].models.{model}.{key}'" in str(exc.value)


def test_mistyped_stage_peak_memory_names_file_and_field(tmp_path):
    rec = make_record("st", "dense", "none", 0)
    rec["stages"][0]["peak_rss_mb"] = "512 MB"
    p = write_records(tmp_path, [rec])[0]
    with pytest.raises(collect.MetricsFileError) as exc:
        collect.collect_metrics([p])
    assert str(p) in str(exc.value) and "'stages[0].peak_rss_mb'" in str(exc.value)


def test_compute_table_one_row_per_model_in_table_order(df, df_qat):
    t = tables.compute_table(df)
    models = df.groupby(["train", "compression", "finetune"]).ngroups
    assert len(t) == models == 2 + 1 + 2 * 4 * 3 - 1
    assert list(t.columns[:3]) == ["experiment", "dataset", "arch"]
    assert not t.duplicated(["train", "compression", "finetune"]).any()
    head = list(zip(t["model"], t["compression_level"]))[:9]
    assert head == [("f_st", "dense"), ("T_ad(f_st)", "dense"),
                    ("f_st^p", "sparsity 0.5"), ("T_st(f_st^p)", "sparsity 0.5"),
                    ("T_ad(f_st^p)", "sparsity 0.5"), ("f_st^p", "sparsity 0.8"),
                    ("T_st(f_st^p)", "sparsity 0.8"), ("T_ad(f_st^p)", "sparsity 0.8"),
                    ("f_st^q (PTQ)", "INT8")]
    assert list(t["train"]) == ["st"] * 14 + ["rb"] * 12  # st before rb, like the other tables
    assert _model(t, "f_rb")["n"] == 2 and _model(t, "f_rb^q (PTQ)", "INT8")["n"] == 1
    assert _model(t, "f_rb^q (PTQ)", "INT4")["n"] == 2
    # QAT nodes at every bit width, most bits first
    tq = tables.compute_table(df_qat)
    assert len(tq) == len(t) + 5 + 1
    qat = tq[tq["method"] == "qat"]
    assert list(qat["compression_level"]) == ["INT16", "INT8", "INT8", "INT4", "INT2", "INT1"]
    assert list(qat["model"])[1:3] == ["f_rb^q (QAT)", "T_ad(f_rb^q) (QAT)"]


def test_compute_table_sizes_lineage_and_na_without_measurements(df):
    t = tables.compute_table(df)
    tad = _model(t, "T_ad(f_st)")
    assert tad["params_mean"] == 1000 and tad["macs"] == "5 kMAC"
    assert tad["weight_size"] == "3.0 kB" and tad["checkpoint_size"] == "4.0 kB"
    assert tad["lineage_wall_min"] == "24.00 ± 0.00"  # 10 min training + 14 min fine-tuning
    assert tad["lineage_macs"] == "200 TMAC" and tad["lineage_macs_mean"] == pytest.approx(2e14)
    pruned = _model(t, "T_ad(f_st^p)", "sparsity 0.8")
    assert pruned["lineage_wall_min_mean"] == pytest.approx(20 + 1 / 60)
    assert _model(t, "f_rb")["lineage_wall_min"] == "119.00 ± 1.41"
    # these eval.json files have no latency, memory or INT8 records: n/a, NaN
    for col in ("latency_ms", "int8_latency_ms", "int8_clean_acc", "fake_quant_clean_acc",
                "peak_rss_mb"):
        assert (t[col] == "n/a").all(), col
    assert t["latency_speedup"].isna().all() and t["int8_speedup"].isna().all()
    assert (t["int8_n"] == 0).all()


def test_compute_table_latency_speedup_int8_and_peak_memory(tmp_path):
    t = tables.compute_table(frame(tmp_path, compute_records()))
    assert list(t["model"]) == ["f_st", "T_ad(f_st^p)", "f_st^q (PTQ)", "f_rb",
                                "T_ad(f_rb^q) (PTQ)"]
    f_st = _model(t, "f_st")
    assert f_st["latency_ms"] == "11.00 ± 1.41" and f_st["latency_speedup"] == pytest.approx(1.0)
    assert f_st["latency_batch"] == "256" and f_st["latency_threads"] == "2"
    assert f_st["int8_latency_ms"] == "n/a" and math.isnan(f_st["int8_speedup"])
    assert f_st["int8_clean_acc"] == "n/a" and f_st["fake_quant_clean_acc"] == "n/a"
    assert f_st["peak_rss_mb_mean"] == pytest.approx(510.0)  # training (500/520) > eval (300/310)
    assert f_st["peak_rss_mb"] == "510.00 ± 14.14"
    pq = _model(t, "f_st^q (PTQ)")  # half of f_st's mean latency: 2x; real INT8 at a quarter
    assert pq["latency_ms"] == "5.50 ± 0.00" and pq["latency_speedup"] == pytest.approx(2.0)
    assert pq["int8_latency_ms"] == "2.75 ± 0.00" and pq["int8_speedup"] == pytest.approx(4.0)
    assert pq["int8_clean_acc"] == "90.00 ± 1.41" and pq["fake_quant_clean_acc"] == "91.00 ± 1.41"
    assert pq["int8_n"] == 2 and pq["int8_agreement_mean"] == pytest.approx(98.0)
    assert pq["int8_agreement"] == f"{pq['int8_agreement_min']:.1f}" and pq["int8_agreement_min"] <= 98.0
    assert pq["int8_model_bytes_mean"] == 1500
    assert pq["peak_rss_mb_mean"] == pytest.approx(710.0)  # the evaluation is the peak here
    pruned = _model(t, "T_ad(f_st^p)")  # twice f_st's latency; fine-tuning is the peak
    assert pruned["latency_speedup"] == pytest.approx(0.5) and pruned["peak_rss_mb"] == "800.00 ± 0.00"
    assert pruned["int8_latency_ms"] == "n/a"
    assert pruned["lineage_wall_min_mean"] == pytest.approx(10 + 1 / 60 + 10)
    # robust models are compared with f_rb, not f_st
    assert _model(t, "f_rb")["latency_speedup"] == pytest.approx(1.0)
    rb_q = _model(t, "T_ad(f_rb^q) (PTQ)")
    assert rb_q["latency_speedup"] == pytest.approx(2.0)
    assert rb_q["lineage_wall_min_mean"] == pytest.approx(118 + 2 / 60 + 12)
    assert rb_q["peak_rss_mb"] == "n/a"  # its fine-tuning stage recorded no peak memory
    layout = render._layout_compute(t)
    assert list(layout["Speed-up"]) == ["1.00x", "0.50x", "2.00x", "1.00x", "2.00x"]
    assert list(layout["INT8 speed-up"]) == ["n/a", "n/a", "4.00x", "n/a", "n/a"]
    assert list(layout["INT8 acc. (%)"])[:3] == ["n/a", "n/a", "90.00 ± 1.41"]
    assert list(layout["INT8 agreement (%)"])[:2] == ["n/a", "n/a"] and layout["INT8 agreement (%)"].iloc[2] != "n/a"
    assert layout["Params"].iloc[0] == "1,000" and layout["Peak memory (MB)"].iloc[-1] == "n/a"
    # without a dense reference the speed-up is n/a, the latency still shown
    alone = tables.compute_table(frame(tmp_path / "alone", compute_records()[2:5]))
    assert _model(alone, "f_st^q (PTQ)")["latency_ms"] == "5.50 ± 0.00"
    assert math.isnan(_model(alone, "f_st^q (PTQ)")["latency_speedup"])


def test_compute_table_mixes_measured_and_unmeasured_records(tmp_path):
    recs = [with_compute(make_record("st", "dense", "none", 0), 10.0, 300.0, [500.0]),
            make_record("st", "dense", "none", 1),  # latency and memory not measured
            make_record("st", "ptq-int8", "ad", 0)]
    t = tables.compute_table(frame(tmp_path, recs))
    f_st = _model(t, "f_st")
    assert f_st["n"] == 2 and f_st["latency_ms"] == "10.00 ± 0.00"  # over the seeds that have it
    assert f_st["peak_rss_mb"] == "500.00 ± 0.00"
    unmeasured = _model(t, "T_ad(f_st^q) (PTQ)")
    assert unmeasured["latency_ms"] == "n/a" and math.isnan(unmeasured["latency_speedup"])
    assert unmeasured["int8_latency_ms"] == "n/a" and unmeasured["peak_rss_mb"] == "n/a"
    assert unmeasured["lineage_wall_min"] == "22.03 ± 0.00" and unmeasured["lineage_macs"] != "n/a"


def test_compute_table_from_all_metrics_csv(tmp_path):
    df = frame(tmp_path, compute_records())
    again = pd.read_csv(collect.write_metrics_csv(df, tmp_path / "all_metrics.csv"))
    pd.testing.assert_frame_equal(tables.compute_table(again), tables.compute_table(df))
    # an all_metrics.csv written before the new columns existed still gives the table
    older = again.drop(columns=[c for c in again.columns if "latency" in c or "peak" in c])
    t = tables.compute_table(older)
    assert len(t) == 5 and (t["latency_ms"] == "n/a").all() and (t["peak_rss_mb"] == "n/a").all()


def test_write_tables_compute_files(tmp_path):
    out = tmp_path / "tables"
    written = render.write_tables(frame(tmp_path / "e", compute_records()), out, 0.8, 8)
    names = [p.name for p in written]
    at = names.index("compute.csv")
    assert names[at:at + 4] == ["compute.csv", "compute.md", "compute.tex", "compute.html"]
    csv = pd.read_csv(out / "compute.csv")
    assert len(csv) == 5 and list(csv.columns[:3]) == ["experiment", "dataset", "arch"]
    row = csv[csv["model"] == "f_st^q (PTQ)"].iloc[0]
    assert row["latency_ms_mean"] == pytest.approx(5.5)
    assert row["latency_speedup"] == pytest.approx(2.0)
    assert row["int8_clean_acc_mean"] == pytest.approx(90.0)
    assert row["peak_rss_mb_mean"] == pytest.approx(710.0)
    md = (out / "compute.md").read_text(encoding="utf-8")
    assert md.startswith("Compute and memory on Fashion-MNIST (8-layer CNN)")
    header = [c.strip() for c in md.split("\n\n")[1].splitlines()[0].strip("|").split("|")]
    assert header == ["Model", "Compression", "n", "Params", "MACs", "Weights", "Checkpoint",
                      "Latency (ms)", "Speed-up", "INT8 latency (ms)", "INT8 speed-up",
                      "INT8 acc. (%)", "Fake-quant acc. (%)", "INT8 agreement (%)", "INT8 robust (%)",
                      "Fake-quant robust (%)", "Lineage time (min)",
                      "Lineage MACs (est.)", "Peak memory (MB)", "Evaluation (s)"]
    assert re.search(r"\| f_st\^q \(PTQ\) +\| INT8 +\| 2 +\|", md)
    assert "2.00x" in md and "4.00x" in md and "n/a" in md and "90.00 ± 1.41" in md
    assert "batch of 256 test images on the CPU" in md and "torch.ao's (oneDNN)" in md
    assert "peak resident set size" in md and "fp32 with rounding" in md
    tex = (out / "compute.tex").read_text(encoding="utf-8")
    rows = check_latex_table(tex)
    assert len(rows) == 5 and r"\label{tab:compute}" in tex
    assert rows[2][:3] == ["$f_{st}^{q}$ (PTQ)", "INT8", "2"] and rows[2][8] == "2.00x"
    assert rows[2][11] == r"90.00 $\pm$ 1.41" and rows[1][0] == r"$\mathcal{T}_{ad}(f_{st}^{p})$"
    assert rows[1][1] == "sparsity 0.8" and rows[2][9] == r"2.75 $\pm$ 0.00"
    assert rows[2][10] == "4.00x"
    assert r"\multicolumn{7}{c}{Real INT8}" in tex and "Acc. (\\%)" in tex


def test_write_tables_compute_empty_and_several_groups(df, tmp_path):
    render.write_tables(collect.collect_metrics([]), tmp_path / "empty", 0.8, 8, dataset="digits")
    assert "(no data)" in (tmp_path / "empty" / "compute.md").read_text(encoding="utf-8")
    tex = (tmp_path / "empty" / "compute.tex").read_text(encoding="utf-8")
    check_latex_table(tex)
    assert r"\multicolumn{20}{c}{no data}" in tex
    other = frame(tmp_path / "e", [make_record("st", "dense", "none", 0, experiment="exp_2&b")])
    out = tmp_path / "tables"
    render.write_tables(pd.concat([df, other], ignore_index=True), out, 0.8, 8)
    tex = (out / "compute.tex").read_text(encoding="utf-8")
    rows = check_latex_table(tex)
    assert r"\emph{exp\_2\&b: Fashion-MNIST, 8-layer CNN}" in tex and len(rows) == 2 + 26 + 1


# ----------------------------------------------------------------------------- LaTeX structure


def _unescaped(pattern: str) -> str:
    return r"(?<!\\)" + pattern


def check_latex_table(tex: str) -> list[list[str]]:
    """Structural LaTeX check (no TeX installation needed): environments nest, braces and
    math shifts balance, booktabs rules are in order, every tabular row spans the column spec.
    Returns the body rows as lists of cells."""
    stack = []
    for kind, name in re.findall(r"\\(begin|end)\{([^}]*)\}", tex):
        if kind == "begin":
            stack.append(name)
        else:
            assert stack and stack.pop() == name, f"\\end{{{name}}} does not close"
    assert not stack, f"unclosed environments {stack}"
    depth = 0
    for ch in re.sub(r"\\[{}]", "", tex):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0, "a } closes nothing"
    assert depth == 0, "unbalanced braces"
    for line in tex.splitlines():
        if not line.startswith("%"):
            assert len(re.findall(_unescaped(r"\$"), line)) % 2 == 0, f"unbalanced $ in {line!r}"
    spec = re.search(r"\\begin\{tabular\}\{([lcr]+)\}", tex).group(1)
    top, mid, bottom = (tex.index(r"\toprule"), tex.index(r"\midrule"), tex.index(r"\bottomrule"))
    assert top < mid < bottom
    rows = []
    for line in tex[top:bottom].splitlines():
        line = line.strip()
        if not line.endswith(r"\\"):
            continue
        cells = re.split(_unescaped("&"), line[:-2])
        span = sum(int(m.group(1)) if (m := re.search(r"\\multicolumn\{(\d+)\}", c)) else 1
                   for c in cells)
        assert span == len(spec), f"row spans {span} columns, tabular has {len(spec)}: {line!r}"
        if tex.index(line) > mid:
            rows.append([c.strip() for c in cells])
    return rows


# ----------------------------------------------------------------------------- writers


def test_write_tables_fashion_mnist(df_qat, tmp_path):
    out = tmp_path / "tables"
    written = render.write_tables(df_qat, out, 0.8, 8)
    stems = vocab.table_names("fashion_mnist")
    assert [p.name for p in written] == [f"{s}.{e}" for s in stems for e in ("csv", "md", "tex", "html")]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)  # no temp files
    page = (out / "table3_compressed.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.count("<table") == 1 and "82.00 ± 2.83" in page
    assert "Performance of compressed standard and robust models" in page
    t3 = pd.read_csv(out / "table3_compressed.csv")
    row = t3[(t3["model"] == "f_st^p") & (t3["performance"] == "test")].iloc[0]
    assert row["ad_mean"] == pytest.approx(82.0) and row["ad_std"] == pytest.approx(2.8284, 1e-4)
    assert list(t3.columns[:3]) == ["experiment", "dataset", "arch"]

    md3 = (out / "table3_compressed.md").read_text(encoding="utf-8")
    assert md3.startswith("Table 3:") and "80% sparsity" in md3.splitlines()[0] and "INT8" in md3
    assert "Fashion-MNIST (8-layer CNN)" in md3.splitlines()[0]
    assert "82.00 ± 2.83" in md3 and "n/a" in md3 and "T_st(·)" in md3
    assert "2/0/2" in md3 and "1/2/2" in md3  # per-column seed counts where they differ
    md2 = (out / "table2_baselines.md").read_text(encoding="utf-8")
    header = [c.strip() for c in md2.split("\n\n")[1].splitlines()[0].strip("|").split("|")]
    assert header == ["Dataset", "Model", "n", "Test", "Robustness"]
    assert md2.startswith("Table 2:") and "T_ad(f_st)" in md2 and "| Fashion-MNIST |" in md2
    md5 = (out / "table5_adversarial_finetuning.md").read_text(encoding="utf-8")
    assert md5.startswith("Table 5:") and "T_ad(f_rb^q) (PTQ)" in md5
    assert re.search(r"\| T_ad\(f_rb\^q\) \(QAT\) +\| 1 +\| 88\.00 ± 0\.00", md5)
    gains = (out / "computational_gains.md").read_text(encoding="utf-8")
    assert "119.00 ± 1.41" in gains and "150 TMAC" in gains and "| 0.12 " in gains
    assert "| 1.00 " in gains  # ratios stay formatted text

    tex3 = (out / "table3_compressed.tex").read_text(encoding="utf-8")
    rows3 = check_latex_table(tex3)
    assert rows3[0] == ["$f_{st}^{p}$", "test", r"62.50 $\pm$ 0.71", r"61.50 $\pm$ 0.71",
                        r"82.00 $\pm$ 2.83", "2"]
    assert rows3[1][0] == "" and r"\multicolumn{3}{c}{Fine-tuning}" in tex3
    assert r"\caption{" in tex3 and r"80\% sparsity" in tex3 and r"\label{tab:table3_compressed}" in tex3
    rows5 = check_latex_table((out / "table5_adversarial_finetuning.tex").read_text(encoding="utf-8"))
    assert rows5[-1] == [r"$\mathcal{T}_{ad}(f_{rb}^{q})$ (QAT)", "1", r"88.00 $\pm$ 0.00",
                         r"81.00 $\pm$ 0.00"]
    rows2 = check_latex_table((out / "table2_baselines.tex").read_text(encoding="utf-8"))
    assert [r[1] for r in rows2] == ["$f_{st}$", "$f_{rb}$", r"$\mathcal{T}_{ad}(f_{st})$"]
    rows_g = check_latex_table((out / "computational_gains.tex").read_text(encoding="utf-8"))
    assert rows_g[0][:5] == ["$f_{rb}$", "training", "2", r"119.00 $\pm$ 1.41", "1.00"]
    assert rows_g[1][5] == "150 TMAC" and rows_g[1][-1] == "cuda"


def test_write_tables_cifar10_names_tables_4_and_6(tmp_path):
    recs = [make_record(t, c, f, 0, dataset="cifar10", arch="resnet18", experiment="c10_rn18")
            for t, c, f in [("st", "dense", "none"), ("rb", "dense", "none"),
                            ("st", "prune-0.5", "ad"), ("st", "ptq-int8", "ad")]]
    out = tmp_path / "tables"
    written = render.write_tables(frame(tmp_path / "e", recs), out, 0.5, 8)
    assert {p.stem for p in written} == set(vocab.table_names("cifar10"))
    md4 = (out / "table4_compressed.md").read_text(encoding="utf-8")
    md6 = (out / "table6_adversarial_finetuning.md").read_text(encoding="utf-8")
    assert md4.startswith("Table 4:") and "CIFAR10 (ResNet-18)" in md4 and "50% sparsity" in md4
    assert md6.startswith("Table 6:")
    tex4 = (out / "table4_compressed.tex").read_text(encoding="utf-8")
    check_latex_table(tex4)
    assert r"\label{tab:table4_compressed}" in tex4 and r"50\% sparsity" in tex4


def test_write_tables_several_groups_and_escaping(df, tmp_path):
    other = frame(tmp_path / "e", [make_record("st", "dense", "none", 0, experiment="exp_2&b")])
    out = tmp_path / "tables"
    render.write_tables(pd.concat([df, other], ignore_index=True), out, 0.8, 8)
    tex = (out / "table2_baselines.tex").read_text(encoding="utf-8")
    rows = check_latex_table(tex)
    assert r"\emph{exp\_2\&b: Fashion-MNIST, 8-layer CNN}" in tex and len(rows) == 2 + 2 * 3
    md = (out / "table2_baselines.md").read_text(encoding="utf-8")
    assert "**exp_2&b: Fashion-MNIST, 8-layer CNN**" in md and "**fmnist_cnn8:" in md


def test_write_tables_needs_one_dataset(df, tmp_path):
    other = frame(tmp_path / "e", [make_record("st", "dense", "none", 0, dataset="cifar10")])
    with pytest.raises(ValueError, match="exactly one dataset"):
        render.write_tables(pd.concat([df, other], ignore_index=True), tmp_path / "t", 0.8, 8)
    with pytest.raises(ValueError, match="got rows of datasets"):
        render.write_tables(df, tmp_path / "t", 0.8, 8, dataset="cifar10")
    with pytest.raises(ValueError, match="pass dataset="):
        render.write_tables(collect.collect_metrics([]), tmp_path / "t", 0.8, 8)


def page_tables(page: str) -> list[tuple[list[str], list[list[tuple[str, str]]]]]:
    """[(header, rows of (cell class, text))] of each table of one of our HTML pages."""
    tables = []
    for table in re.findall(r"<table>(.*?)</table>", page, flags=re.S):
        header = [html.unescape(h) for h in re.findall(r"<th>(.*?)</th>", table)]
        rows = [[(kind, html.unescape(text)) for kind, text in re.findall(r'<td(?: class="(\w+)")?>(.*?)</td>', tr)]
                for tr in re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1], flags=re.S)]
        tables.append((header, rows))
    return tables


def min_width_chars(header: list[str], rows: list) -> int:
    """The narrowest a table can be laid out, in characters: per column its longest word (number cells and
    header words do not break; a "long" cell breaks anywhere)."""
    def unbreakable(kind: str, text: str) -> int:
        return len(text) if kind == "number" else 1 if kind == "long" else max(map(len, text.split()), default=0)

    return sum(max([unbreakable("", h)] + [unbreakable(*row[j]) for row in rows]) for j, h in enumerate(header))


def test_the_reports_html_tables_fit_beside_their_caption(df_qat, tmp_path):
    """The report shows a table's HTML in half a screen (about 650 px at 13 px, 80 characters with padding):
    a wide table comes in parts that each fit, every column in one part beside the columns that name a row."""
    controls = frame(tmp_path / "controls", [make_record("st", "prune-0.8", arm, seed)
                                             for arm in ("fgsm", "scratch") for seed in (0, 1)])
    render.write_tables(pd.concat([df_qat, controls], ignore_index=True), tmp_path, 0.8, 8)
    for stem in vocab.table_names("fashion_mnist"):
        md = (tmp_path / f"{stem}.md").read_text(encoding="utf-8")
        first_row = next(line for line in md.splitlines() if line.startswith("|"))
        md_header = [c.strip() for c in first_row.strip("|").split("|")]
        parts = page_tables((tmp_path / f"{stem}.html").read_text(encoding="utf-8"))
        assert {c for header, _ in parts for c in header} == set(md_header), stem
        assert all(header[0] == md_header[0] or header[0] == md_header[1] for header, _ in parts), stem
        for header, rows in parts:
            assert min_width_chars(header, rows) <= 80, (stem, header)
        if stem == "claims":  # the answer beside the question
            assert parts[0][0] == ["Claim", "Statement", "A", "B", "Verdict"]
    (header, rows), = page_tables((tmp_path / "table3_compressed.html").read_text(encoding="utf-8"))
    assert rows[0][:2] == [("", "f_st^p"), ("", "test")] and rows[0][4] == ("number", "82.00 ± 2.83")  # one line


def test_an_html_table_whose_layout_lost_a_column_is_refused():
    block = pd.DataFrame({"Claim": ["C1"], "Statement": ["s"]})
    with pytest.raises(ValueError, match="HTML parts of table layout 'claims'"):
        html_tables.block_html(block, "claims")


def test_write_tables_empty(tmp_path):
    written = render.write_tables(collect.collect_metrics([]), tmp_path, 0.8, 8, dataset="cifar10")
    assert [p.stem for p in written[::4]] == vocab.table_names("cifar10")
    assert all(p.exists() for p in written)
    assert "(no data)" in (tmp_path / "table2_baselines.md").read_text(encoding="utf-8")
    assert "(no data)" in (tmp_path / "table2_baselines.html").read_text(encoding="utf-8")
    tex = (tmp_path / "table4_compressed.tex").read_text(encoding="utf-8")
    check_latex_table(tex)
    assert r"\multicolumn{6}{c}{no data}" in tex


# ----------------------------------------------------------------------------- figures


def _assert_png(p: Path):
    data = p.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC


def _assert_pdf(p: Path):
    data = p.read_bytes()
    assert len(data) > 1000 and data[:5] == PDF_MAGIC and b"%%EOF" in data[-32:]


def test_figures_png_and_pdf(df_qat, tmp_path):
    fig = tmp_path / "fig"
    f1 = figures.plot_figure1(df_qat, fig / "f1.png", fig / "f1.pdf")
    f3 = figures.plot_figure3(df_qat, fig / "f3.png")  # PDF is optional
    f4 = figures.plot_figure4(df_qat, fig / "f4.png", fig / "f4.pdf")
    assert [p.name for p in f1 + f3 + f4] == ["f1.png", "f1.pdf", "f3.png", "f4.png", "f4.pdf"]
    for p in f1 + f3 + f4:
        (_assert_png if p.suffix == ".png" else _assert_pdf)(p)
    assert sorted(p.name for p in fig.iterdir()) == sorted(p.name for p in f1 + f3 + f4)


def test_plot_figures_by_name(df_qat, tmp_path):
    written = figures.plot_figures(df_qat, tmp_path)
    assert [p.name for p in written] == [f"{n}.{e}" for n in figures.FIGURES for e in ("png", "pdf")]
    assert list(figures.FIGURES) == ["figure1_adversarial_finetuning", "figure3_no_finetuning",
                                    "figure4_qat", "figure5_robustness_curves", "figure6_frontier"]
    with pytest.raises(ValueError, match="unknown figure"):
        figures.plot_figures(df_qat, tmp_path, ["figure9"])


def test_bit_width_axis_int16_to_int1(df_qat):
    fig = figures.new_figure(5, 4)
    ax = fig.subplots()
    ns = figures._panel(ax, df_qat, "qat", "none", ("rb",), "QAT")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["INT16", "INT8", "INT4", "INT2", "INT1"]
    assert ns == [2] * 5 * 2  # five bit widths, test and robustness, two seeds each
    curves = ax.containers  # one errorbar per curve: robust f_rb test and robustness
    assert len(curves) == 2
    assert all(sorted(c.lines[0].get_xdata()) == [0, 1, 2, 3, 4] for c in curves)


def test_figures_without_data_and_from_csv(df, tmp_path):
    _assert_png(figures.plot_figure1(collect.collect_metrics([]), tmp_path / "empty.png")[0])
    only_prune = df[df.method != "ptq"]  # PTQ panel says "no data"
    _assert_png(figures.plot_figure3(only_prune, tmp_path / "noptq.png")[0])
    _assert_pdf(figures.plot_figure4(df, tmp_path / "noqat.png", tmp_path / "noqat.pdf")[1])
    # the workflow plots from all_metrics.csv, not from the eval files
    csv = collect.write_metrics_csv(df, tmp_path / "all_metrics.csv")
    again = pd.read_csv(csv)
    _assert_png(figures.plot_figure1(again, tmp_path / "from_csv.png")[0])
    t = tables.computational_gains(again, 0.8, 8)
    assert _gain(t, "T_ad(f_st)")["adv_wall_min"] == "14.00 ± 0.00"


# ----------------------------------------------------------------------------- the attack suite


def suite_record(train, compression, finetune, seed, pgd, worst, flags=(), square_broke=0, **over):
    """An eval.json of the attack-suite era: PGD first, then APGD-CE, then Square."""
    attacks = {"pgd": {"attacked": 90, "broken": 10, "robust_acc_after": pgd, "wall_time_s": 1.0},
               "apgd_ce": {"attacked": 80, "broken": 3, "robust_acc_after": (pgd + worst) / 2, "wall_time_s": 1.0},
               "square": {"attacked": 77, "broken": square_broke, "robust_acc_after": worst, "wall_time_s": 1.0}}
    checks = {c: 0.0 for c in vocab.AUDIT_CHECKS} | {"gradient_free_gain": square_broke / 100}
    curve = [{"eps_fraction": f, "eps_pixel": 0.05 * f, "robust_acc": max(0.0, worst - 0.2 * f)} for f in (0, 1, 2)]
    return make_record(train, compression, finetune, seed, clean=0.9, robust=worst, robust_acc_pgd=pgd,
                       robust_acc_whitebox=(pgd + worst) / 2, attacks=attacks, attack_order=list(attacks),
                       audit={"checks": checks, "flags": list(flags)}, diverged=False,
                       robustness_curve=curve, **over)


@pytest.fixture
def suite_df(tmp_path):
    recs = []
    for seed in (0, 1):
        recs.append(suite_record("st", "dense", "none", seed, 0.2, 0.15))
        recs.append(suite_record("rb", "dense", "none", seed, 0.7, 0.68))
        recs.append(suite_record("st", "ptq-int4", "ad", seed, 0.44, 0.27, flags=["gradient_free_gain"],
                                 square_broke=12))
        recs.append(suite_record("st", "prune-0.5", "ad", seed, 0.6, 0.58))
    recs.append(make_record("rb", "prune-0.5", "ad", 0, clean=None, robust=None, diverged=True,
                            diverged_reason="non-finite weights"))
    recs[-1]["clean_acc"] = recs[-1]["robust_acc"] = None
    recs.append(suite_record("rb", "prune-0.5", "ad", 1, 0.6, 0.59))
    return frame(tmp_path, recs)


def test_collect_reads_every_attack_the_audit_and_the_curve(suite_df):
    row = suite_df[(suite_df["compression"] == "ptq-int4") & (suite_df["seed"] == 0)].iloc[0]
    assert row["robust_acc_pgd"] == 0.44 and row["robust_acc"] == 0.27
    assert row["robust_acc_after_square"] == 0.27 and row["broken_by_square"] == 12
    assert pd.isna(row["robust_acc_after_fab_t"]) and row["audit_flags"] == "gradient_free_gain"
    assert row["audit_gradient_free_gain"] == 0.12 and row["robust_acc_eps_x2"] == pytest.approx(0.0)
    dense = suite_df[(suite_df["compression"] == "dense") & (suite_df["train"] == "st")].iloc[0]
    assert dense["audit_flags"] == "" and not dense["diverged"]
    gone = suite_df[suite_df["diverged"].fillna(False).astype(bool)].iloc[0]
    assert pd.isna(gone["clean_acc"]) and pd.isna(gone["robust_acc"])


def test_a_null_accuracy_must_come_with_the_diverged_mark(tmp_path):
    rec = make_record("st", "dense", "none", 0)
    rec["robust_acc"] = None
    with pytest.raises(collect.MetricsFileError, match="not marked diverged"):
        frame(tmp_path, [rec])


def test_tables_say_diverged_and_mark_flagged_robustness(suite_df, tmp_path):
    t5 = tables.table5(suite_df, 0.5, 4)
    cells = dict(zip(t5["model"], zip(t5["test"], t5["robustness"])))
    assert cells["T_ad(f_rb^p)"] == ("diverged (1/2)", "diverged (1/2)")  # never a number
    assert cells["T_ad(f_st^q) (PTQ)"][1].endswith(labels.FLAG_MARK)
    assert not cells["T_ad(f_st^q) (PTQ)"][0].endswith(labels.FLAG_MARK)  # test accuracy is not in question
    assert not cells["f_st"][1].endswith(labels.FLAG_MARK)
    row = t5[t5["model"] == "T_ad(f_rb^p)"].iloc[0]
    assert pd.isna(row["robust_mean"]) and row["diverged"] == 1
    written = render.write_tables(suite_df, tmp_path, 0.5, 4)
    md = (tmp_path / "table5_adversarial_finetuning.md").read_text(encoding="utf-8")
    assert "diverged (1/2)" in md and labels.FLAG_MARK in md and "evaluation audit flagged" in md
    tex = (tmp_path / "table5_adversarial_finetuning.tex").read_text(encoding="utf-8")
    assert r"$^{\dagger}$" in tex and labels.FLAG_MARK not in tex
    check_latex_table(tex)
    assert {p.stem for p in written} == set(vocab.table_names("fashion_mnist"))


def test_the_evaluation_audit_table_names_the_decisive_attack(suite_df, tmp_path):
    audit = audit_table.evaluation_audit(suite_df)
    int4 = audit[audit["compression"] == "ptq-int4"].iloc[0]
    assert int4["pgd_mean"] == pytest.approx(44.0) and int4["worst_case_mean"] == pytest.approx(27.0)
    assert int4["gap_mean"] == pytest.approx(17.0) and int4["decisive_attack"] == "square"
    assert int4["gradient_free_gain_flagged"] == 2 and int4["flags"] == "gradient_free_gain"
    pruned_rb = audit[(audit["train"] == "rb") & (audit["compression"] == "prune-0.5")].iloc[0]
    assert pruned_rb["diverged"] == 1 and pruned_rb["worst_case_mean"] == pytest.approx(59.0)  # the scored seed
    render.write_tables(suite_df, tmp_path, 0.5, 4)
    md = (tmp_path / "evaluation_audit.md").read_text(encoding="utf-8")
    assert "| square" in md and "12.00 (2)" in md
    check_latex_table((tmp_path / "evaluation_audit.tex").read_text(encoding="utf-8"))


def test_figure5_draws_the_robustness_curves(suite_df, tmp_path):
    paths = figures.plot_figure5(suite_df, tmp_path / "f5.png", tmp_path / "f5.pdf")
    _assert_png(paths[0])
    _assert_pdf(paths[1])
    empty = figures.plot_figure5(suite_df.drop(columns=[c for c in suite_df if c.startswith("robust_acc_eps_x")]),
                                 tmp_path / "none.png")
    _assert_png(empty[0])


def drawn_figure(monkeypatch, plot, df):
    """The matplotlib Figure ``plot`` draws from ``df`` (rendered, not saved)."""
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, *paths: drawn.append(fig) or [])
    plot(df, "unused.png")
    (fig,) = drawn
    fig.canvas.draw()  # renders every text: a label that is not valid mathtext raises here
    return fig


def series(ax) -> dict:
    """{legend label: the data line (Line2D) of its error-bar series} of one panel."""
    return {c.get_label(): c.lines[0] for c in ax.containers}


@pytest.fixture
def levels_df(tmp_path):
    """T_ad(f_st^p) at one sparsity, whose test accuracy (mean ± std) passes 100 % and robustness passes 0 %;
    T_ad(f_rb^p) at two sparsities; the dense models."""
    recs = [make_record(train, "dense", "none", seed) for train in ("st", "rb") for seed in (0, 1)]
    recs += [make_record("st", "prune-0.5", "ad", 0, clean=0.999, robust=0.0),
             make_record("st", "prune-0.5", "ad", 1, clean=0.90, robust=0.10)]
    recs += [make_record("rb", comp, "ad", seed) for comp in ("prune-0.5", "prune-0.8") for seed in (0, 1)]
    return frame(tmp_path, recs)


T_AD_ST_P, T_AD_RB_P = r"$\mathcal{T}_{ad}(f_{st}^{p})$", r"$\mathcal{T}_{ad}(f_{rb}^{p})$"


def test_accuracy_axes_span_0_to_100_and_error_bars_are_clipped_not_the_data(levels_df, monkeypatch):
    fig = drawn_figure(monkeypatch, figures.plot_figure1, levels_df)
    prune, ptq = fig.axes
    assert prune.get_ylim() == (0.0, 100.0)
    assert [t.get_text() for t in ptq.texts] == ["no data"]
    test = next(c for c in prune.containers if c.get_label() == f"{T_AD_ST_P}: test")
    robust = next(c for c in prune.containers if c.get_label() == f"{T_AD_ST_P}: robustness")
    # the points are the means as measured: 94.95 ± 7.0 and 5.0 ± 7.1
    assert test.lines[0].get_ydata()[0] == pytest.approx(94.95)
    assert robust.lines[0].get_ydata()[0] == pytest.approx(5.0)
    for c in prune.containers:
        (bars,) = c.lines[2]
        ys = np.concatenate([seg[:, 1] for seg in bars.get_segments()])
        caps = np.concatenate([cap.get_ydata() for cap in c.lines[1]])
        assert ys.min() >= 0.0 and ys.max() <= 100.0 and caps.min() >= 0.0 and caps.max() <= 100.0
    # the bars stop at the axis, they are not dropped
    assert test.lines[2][0].get_segments()[0][:, 1].max() == pytest.approx(100.0)
    assert robust.lines[2][0].get_segments()[0][:, 1].min() == pytest.approx(0.0)


def test_a_single_level_is_drawn_as_points_several_levels_as_lines(levels_df, monkeypatch):
    prune = drawn_figure(monkeypatch, figures.plot_figure1, levels_df).axes[0]
    lines = series(prune)
    single = [lines[f"{T_AD_ST_P}: test"], lines[f"{T_AD_ST_P}: robustness"]]
    several = [lines[f"{T_AD_RB_P}: test"], lines[f"{T_AD_RB_P}: robustness"]]
    assert [len(line.get_xdata()) for line in single + several] == [1, 1, 2, 2]
    assert all(line.get_linestyle() == "None" and line.get_marker() == "s" for line in single)
    assert [line.get_linestyle() for line in several] == ["-", "--"]  # test solid, robustness dashed


def test_figures_label_models_in_the_papers_notation_and_titles_name_no_run(levels_df, monkeypatch):
    fig = drawn_figure(monkeypatch, figures.plot_figure1, levels_df)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    # one row per model, test on the left and robustness on the right, then the dense models
    assert legend == [f"{T_AD_ST_P}: test", f"{T_AD_RB_P}: test", "$f_{st}$ (dense, no fine-tuning)",
                      f"{T_AD_ST_P}: robustness", f"{T_AD_RB_P}: robustness", "$f_{rb}$ (dense, no fine-tuning)"]
    assert all(t.get_math_fontfamily() == "cm" for t in fig.axes[0].get_legend().get_texts())
    titles = [fig._suptitle.get_text()] + [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("Fashion-MNIST, 8-layer CNN\n")
    assert r"$\mathcal{T}_{ad}(f^{p})$" in titles[1]
    assert not any("fmnist_cnn8" in t or "Figure" in t for t in titles)  # the run's name, the figure's number


def test_a_model_has_one_colour_and_marker_in_every_figure(suite_df, monkeypatch):
    fig1 = drawn_figure(monkeypatch, figures.plot_figure1, suite_df)
    fig5 = drawn_figure(monkeypatch, figures.plot_figure5, suite_df)
    in_fig1, in_fig5 = series(fig1.axes[0]) | series(fig1.axes[1]), series(fig5.axes[0])

    def style(line):
        return line.get_color(), line.get_marker()

    for label, marker in ((T_AD_ST_P, "s"), (r"$\mathcal{T}_{ad}(f_{st}^{q})$ (PTQ)", "^")):
        assert style(in_fig1[f"{label}: test"]) == style(in_fig1[f"{label}: robustness"])
        assert style(in_fig1[f"{label}: test"]) == style(in_fig5[f"{label} (n = 2)"])
        assert style(in_fig5[f"{label} (n = 2)"])[1] == marker
    # the dense models: the dotted references of Figure 1, the curves of Figure 5
    references = {line.get_color() for line in fig1.axes[0].get_lines() if line.get_linestyle() == ":"}
    assert references == {style(in_fig5["$f_{st}$ (n = 2)"])[0], style(in_fig5["$f_{rb}$ (n = 2)"])[0]}
    assert len(references | {style(in_fig1[f"{T_AD_ST_P}: test"])[0]}) == 3  # different models, different colours
    for ax in fig5.axes:
        assert ax.get_ylim() == (0.0, 100.0)


# ----------------------------------------------------------------------------- training health

TRAINING_COLLAPSE = "epoch 20: training loss 2.3026 >= ln 10 = 2.3026 (training accuracy 0.100)"
PREDICTION_COLLAPSE = "predicts class 3 for 100.0% of 10000 test images (1 of 10 classes ever predicted)"


def health_records() -> list[dict]:
    """Two seeds. On seed 1 f_rb collapsed in training: its own evaluation (at chance, finite numbers) and
    T_ad(f_rb^p), built on it, carry the mark. On seed 0 the pruned f_st without fine-tuning is a constant
    classifier by its predictions: a measurement (no stage trained it), averaged. Every other model is healthy."""
    healthy = {"collapsed": False, "collapsed_reason": None, "collapsed_upstream": []}
    recs = []
    for seed in (0, 1):
        rb_collapsed = seed == 1
        recs.append(make_record("st", "dense", "none", seed, **healthy))
        recs.append(make_record("rb", "dense", "none", seed, clean=0.10 if rb_collapsed else 0.80,
                                robust=0.10 if rb_collapsed else 0.60,
                                **healthy | ({"collapsed": True, "collapsed_reason": TRAINING_COLLAPSE}
                                             if rb_collapsed else {})))
        recs.append(make_record("rb", "prune-0.5", "ad", seed, clean=0.70, robust=0.50,
                                **healthy | {"collapsed_upstream": ["train_base"] if rb_collapsed else []}))
        recs.append(make_record("st", "prune-0.5", "none", seed, clean=0.10 if seed == 0 else 0.30, robust=0.0,
                                **healthy | ({"constant_predictions": PREDICTION_COLLAPSE} if seed == 0 else {})))
        recs.append(make_record("st", "prune-0.5", "ad", seed, clean=0.75, robust=0.55, **healthy))
    return recs


@pytest.fixture
def health_df(tmp_path):
    return frame(tmp_path / "evals", health_records())


def test_a_collapsed_seed_is_never_averaged_and_marks_the_nodes_built_on_it(health_df):
    t2 = tables.table2(health_df).set_index("model")
    assert (t2.loc["f_rb", "test"], t2.loc["f_rb", "robustness"]) == ("collapsed (1/2)", "collapsed (1/2)")
    assert pd.isna(t2.loc["f_rb", "test_mean"]) and t2.loc["f_rb", "collapsed"] == 1
    assert t2.loc["f_st", "test"] == "90.50 ± 0.71" and t2.loc["f_st", "collapsed"] == 0
    t5 = tables.table5(health_df, 0.5, 8).set_index("model")
    # T_ad(f_rb^p) itself trained well on both seeds, but seed 1 was built on the collapsed f_rb
    assert t5.loc["T_ad(f_rb^p)", "robustness"] == "collapsed (1/2)"
    assert t5.loc["T_ad(f_st^p)", "robustness"] == "55.00 ± 0.00"
    t3 = tables.table3(health_df, 0.5, 8)
    pruned_st = t3[(t3["model"] == "f_st^p") & (t3["performance"] == "test")].iloc[0]
    assert pruned_st["none"] == "20.00 ± 14.14" and pruned_st["none_collapsed"] == 0
    assert pruned_st["ad"] == "75.00 ± 0.00" and pruned_st["ad_collapsed"] == 0
    # the evaluation audit shows the healthy seeds' numbers and counts the one it left out
    audit = audit_table.evaluation_audit(health_df)
    f_rb = audit[(audit["train"] == "rb") & (audit["compression"] == "dense")].iloc[0]
    assert f_rb["collapsed"] == 1 and f_rb["diverged"] == 0 and f_rb["clean_mean"] == pytest.approx(80.0)


def test_collapse_is_said_in_every_format_and_survives_all_metrics_csv(health_df, tmp_path):
    written = render.write_tables(health_df, tmp_path / "tables", 0.5, 8)
    assert {p.suffix for p in written} == {".csv", ".md", ".tex", ".html"}
    for ext in ("md", "tex", "html"):
        text = (tmp_path / "tables" / f"table2_baselines.{ext}").read_text(encoding="utf-8")
        assert "collapsed (1/2)" in text and "collapsed (k/n) = k of n seeds" in text, ext
    audit_md = (tmp_path / "tables" / "evaluation_audit.md").read_text(encoding="utf-8")
    assert "2 (1 collapsed)" in audit_md and "collapsed (k/n)" in audit_md
    check_latex_table((tmp_path / "tables" / "table2_baselines.tex").read_text(encoding="utf-8"))
    csv_path = collect.write_metrics_csv(health_df, tmp_path / "all_metrics.csv")
    again = pd.read_csv(csv_path)
    f_rb = again[(again["train"] == "rb") & (again["method"] == "dense")].set_index("seed")
    assert list(f_rb["collapsed"]) == [False, True] and f_rb.loc[1, "collapsed_reason"] == TRAINING_COLLAPSE
    built_on = again[(again["train"] == "rb") & (again["method"] == "prune")].set_index("seed")
    assert built_on.loc[1, "collapsed_upstream"] == "train_base" and pd.isna(built_on.loc[0, "collapsed_upstream"])
    destroyed = again[(again["train"] == "st") & (again["method"] == "prune") & (again["finetune"] == "none")]
    assert list(destroyed.set_index("seed")["constant_predictions"].fillna("")) == [PREDICTION_COLLAPSE, ""]
    assert not destroyed["collapsed"].any()
    # the workflow's tables and figures read all_metrics.csv: the marks hold there too
    t5 = tables.table5(again, 0.5, 8).set_index("model")
    assert t5.loc["T_ad(f_rb^p)", "test"] == "collapsed (1/2)" and t5.loc["f_rb", "test"] == "collapsed (1/2)"


def test_figures_write_collapsed_where_the_point_would_be(health_df, tmp_path):
    fig = figures.new_figure(6, 4)
    ax = fig.subplots()
    (_, g), = stats.groups(health_df)
    figures._panel(ax, g, "prune", "ad", ("rb",), "pruned, adversarial fine-tuning")  # built on a collapsed f_rb
    assert [t.get_text() for t in ax.texts] == ["collapsed"]  # where the point (test and robustness) would be
    assert not any(len(c.lines[0].get_xdata()) and np.isfinite(c.lines[0].get_ydata()).any() for c in ax.containers)
    fig = figures.new_figure(6, 4)
    ax = fig.subplots()
    figures._panel(ax, g, "prune", "none", ("st",), "pruned, no fine-tuning")  # a measurement: drawn
    assert len(ax.texts) == 0 and any(np.isfinite(c.lines[0].get_ydata()).any() for c in ax.containers)
    assert figures.plot_figure3(health_df, tmp_path / "f3.png")[0].read_bytes().startswith(PNG_MAGIC)


def test_a_model_with_both_a_diverged_and_a_collapsed_seed_says_both():
    s = {"n": 3, "diverged": 1, "collapsed": 1, "flagged": 0, "test_mean": math.nan, "test_std": math.nan}
    assert labels.stat_cell(s, "test") == "diverged (1/3), collapsed (1/3)"
    assert labels.health_text(0, 0, 3) == ""


def test_figure5_draws_no_curve_for_a_collapsed_model(tmp_path, monkeypatch):
    recs = [suite_record("rb", "dense", "none", seed, 0.7, 0.68, collapsed=seed == 1,
                         collapsed_reason=TRAINING_COLLAPSE if seed == 1 else None) for seed in (0, 1)]
    recs += [suite_record("st", "dense", "none", seed, 0.2, 0.15) for seed in (0, 1)]
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, *paths: drawn.append(fig) or [])
    figures.plot_figure5(frame(tmp_path, recs), tmp_path / "f5.png")
    legend = [t.get_text() for t in drawn[0].axes[0].get_legend().get_texts()]
    assert legend == ["$f_{st}$ (n = 2)", "$f_{rb}$: collapsed (1/2)"]


@pytest.mark.parametrize("bad, key", [({"collapsed_upstream": "train_base"}, "collapsed_upstream"),
                                      ({"collapsed": "yes"}, "collapsed")])
def test_a_mistyped_collapse_record_is_named(tmp_path, bad, key):
    with pytest.raises(collect.MetricsFileError, match=f"key '{key}'"):
        frame(tmp_path, [make_record("st", "dense", "none", 0, **bad)])
