"""Tests for advfine.report on a small synthetic set of eval.json files with known numbers."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

from advfine import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Hand-picked numbers for one Table 3 / Table 5 cell: T_ad(f_st^p) at sparsity 0.8.
#   test:   80, 84 -> mean 82.00, sample std sqrt((2^2 + 2^2) / 1) = 2.83
#   robust: 70, 76 -> mean 73.00, sample std sqrt((3^2 + 3^2) / 1) = 4.24
FIXED = {("st", "prune-0.8", "ad", 0): (0.80, 0.70), ("st", "prune-0.8", "ad", 1): (0.84, 0.76),
         # f_st (dense, no fine-tuning): 90, 91 / 4, 6
         ("st", "dense", "none", 0): (0.90, 0.04), ("st", "dense", "none", 1): (0.91, 0.06)}
COMPRESSIONS = {"dense": ("dense", None), "prune-0.5": ("prune", 0.5), "prune-0.8": ("prune", 0.8),
                "ptq-int8": ("ptq", 8), "ptq-int4": ("ptq", 4)}


def make_record(train, compression, finetune, seed, clean=None, robust=None, **over):
    method, level = COMPRESSIONS.get(compression, (compression.split("-")[0], None))
    if clean is None:
        clean, robust = FIXED.get((train, compression, finetune, seed), (None, None))
    if clean is None:  # arbitrary but deterministic
        h = sum(map(ord, f"{train}{compression}{finetune}")) % 40
        clean, robust = 0.5 + h / 100 + seed / 100, 0.2 + h / 200 + seed / 50
    stages = [{"stage": "train_base", "wall_time_s": 100.0 + seed}]
    if method != "dense":
        stages.append({"stage": "compress", "wall_time_s": 2.0})
    if finetune != "none":
        stages.append({"stage": "finetune", "wall_time_s": 30.0})
    rec = {
        "experiment": "fmnist_cnn8", "dataset": "fashion_mnist", "arch": "cnn8", "seed": seed,
        "train": train, "compression": compression, "method": method, "level": level,
        "finetune": finetune, "clean_acc": clean, "robust_acc": robust, "n_test": 10000,
        "params": 1000, "macs": 5000, "checkpoint_bytes": 4000, "weight_bytes": 3000,
        "device": "cpu", "eval_wall_time_s": 1.5, "stages": stages,
        "provenance": {"config_hash": "abc123", "git_commit": "deadbeef", "versions": {}},
        "attack": {"eps": 0.1, "step_size": 0.01, "steps": 40},
    }
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


def write_records(dirpath: Path, recs) -> list[Path]:
    paths = []
    for i, rec in enumerate(recs):
        p = dirpath / f"m{i:03d}" / "eval.json"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps(rec))
        paths.append(p)
    return paths


@pytest.fixture
def paths(tmp_path):
    return write_records(tmp_path / "evals", synthetic_records())


@pytest.fixture
def df(paths):
    return report.collect_metrics(paths)


# ----------------------------------------------------------------------------- collect_metrics


def test_collect_metrics_columns_rows_and_sorting(df, paths):
    assert len(df) == len(paths) == 2 * (2 + 4 * 3 * 2 + 1) - 2 - 1
    expected = ["experiment", "dataset", "arch", "seed", "train", "compression", "method", "level",
                "finetune", "clean_acc", "robust_acc", "n_test", "params", "macs",
                "checkpoint_bytes", "weight_bytes", "device", "eval_wall_time_s",
                "train_base_wall_time_s", "compress_wall_time_s", "finetune_wall_time_s",
                "git_commit", "config_hash"]
    assert list(df.columns[: len(expected)]) == expected
    key = ["train", "method", "level", "finetune", "seed"]
    assert df[key].equals(df.sort_values(key, na_position="first", kind="mergesort")[key]
                          .reset_index(drop=True))
    # Same result whatever order the files are given in.
    pd.testing.assert_frame_equal(report.collect_metrics(list(reversed(paths))), df)
    dense = df[(df.method == "dense") & (df.finetune == "none")].iloc[0]
    assert math.isnan(dense["level"])
    assert math.isnan(dense["compress_wall_time_s"]) and math.isnan(dense["finetune_wall_time_s"])
    assert dense["train_base_wall_time_s"] == 100.0
    assert dense["git_commit"] == "deadbeef" and dense["config_hash"] == "abc123"
    pq = df[(df.method == "ptq") & (df.finetune == "ad")].iloc[0]
    assert pq["compress_wall_time_s"] == 2.0 and pq["finetune_wall_time_s"] == 30.0


def test_missing_file_names_it(tmp_path):
    missing = tmp_path / "nope" / "eval.json"
    with pytest.raises(FileNotFoundError, match="nope"):
        report.collect_metrics([missing])


def test_invalid_json_names_file(tmp_path, paths):
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(report.MetricsFileError, match="broken.json"):
        report.collect_metrics(paths[:2] + [bad])


def test_missing_key_names_file_and_key(tmp_path):
    rec = make_record("st", "dense", "none", 0)
    del rec["robust_acc"]
    p = write_records(tmp_path, [rec])[0]
    with pytest.raises(report.MetricsFileError) as exc:
        report.collect_metrics([p])
    assert str(p) in str(exc.value) and "'robust_acc'" in str(exc.value)


def test_percent_instead_of_fraction_is_rejected(tmp_path):
    p = write_records(tmp_path, [make_record("st", "dense", "none", 0, clean=90.5, robust=4.0)])[0]
    with pytest.raises(report.MetricsFileError, match="clean_acc"):
        report.collect_metrics([p])


def test_duplicate_model_is_rejected(tmp_path):
    recs = [make_record("st", "ptq-int8", "ad", 0), make_record("st", "ptq-int8", "ad", 0)]
    ps = write_records(tmp_path, recs)
    with pytest.raises(report.MetricsFileError, match="m001"):
        report.collect_metrics(ps)


# ----------------------------------------------------------------------------- labels


def test_labels_in_paper_notation():
    assert report.model_label("st") == "f_st"
    assert report.model_label("rb", "prune") == "f_rb^p"
    assert report.model_label("st", "dense", "ad") == "T_ad(f_st)"
    assert report.model_label("st", "prune", "st") == "T_st(f_st^p)"
    assert report.model_label("st", "ptq", "ad", quant_kind=True) == "T_ad(f_st^q) (PTQ)"
    assert report.model_label("rb", "qat", "ad", quant_kind=True) == "T_ad(f_rb^q) (QAT)"
    assert report.level_label("ptq", 16.0) == "INT16"


def test_format_cell():
    assert report.format_cell(82.0, 2.8284271) == "82.00 ± 2.83"
    assert report.format_cell(float("nan"), float("nan")) == "n/a"


# ----------------------------------------------------------------------------- tables


def test_table2_rows_columns_values(df):
    t = report.table2(df)
    assert list(t["model"]) == ["f_st", "f_rb", "T_ad(f_st)"]
    assert list(t.columns) == ["experiment", "dataset", "arch", "model", "n", "test",
                               "robustness", "test_mean", "test_std", "robust_mean", "robust_std"]
    f_st = t.iloc[0]
    assert f_st["test"] == "90.50 ± 0.71" and f_st["robustness"] == "5.00 ± 1.41"
    assert f_st["n"] == 2
    assert f_st["test_mean"] == pytest.approx(90.5) and f_st["robust_std"] == pytest.approx(2**0.5)
    # T_ad(f_st) is only listed when present
    no_tad = report.table2(df[~((df.method == "dense") & (df.finetune == "ad"))])
    assert list(no_tad["model"]) == ["f_st", "f_rb"]


def _cell(t, model, perf, ft):
    row = t[(t["model"] == model) & (t["performance"] == perf)]
    assert len(row) == 1
    return row.iloc[0]


def test_table3_cells_na_and_single_seed(df):
    t = report.table3(df, 0.8, 8)
    assert list(t["model"]) == ["f_st^p", "f_st^p", "f_st^q", "f_st^q",
                                "f_rb^p", "f_rb^p", "f_rb^q", "f_rb^q"]
    assert list(t["performance"]) == ["test", "robustness"] * 4
    r = _cell(t, "f_st^p", "test", "ad")
    assert r["ad"] == "82.00 ± 2.83" and r["ad_n"] == 2
    assert r["ad_mean"] == pytest.approx(82.0) and r["ad_std"] == pytest.approx(8**0.5)
    assert _cell(t, "f_st^p", "robustness", "ad")["ad"] == "73.00 ± 4.24"
    # missing combination -> n/a, NaN numbers, n = 0
    miss = _cell(t, "f_rb^p", "test", "st")
    assert miss["st"] == "n/a" and miss["st_n"] == 0 and math.isnan(miss["st_mean"])
    assert _cell(t, "f_rb^p", "robustness", "st")["st"] == "n/a"
    # single seed -> std 0.00
    one = _cell(t, "f_rb^q", "test", "none")
    assert one["none"].endswith(" ± 0.00") and one["none_n"] == 1 and one["none_std"] == 0.0
    # a level that was never run -> everything n/a, rows still there
    t9 = report.table3(df, 0.9, 2)
    assert len(t9) == 8 and (t9[["none", "st", "ad"]] == "n/a").all().all()


def test_table5_rows_and_qat(df, tmp_path):
    t = report.table5(df, 0.8, 8)
    assert list(t["model"]) == ["f_st", "T_ad(f_st^p)", "T_ad(f_st^q) (PTQ)",
                                "f_rb", "T_ad(f_rb^p)", "T_ad(f_rb^q) (PTQ)"]
    assert t.iloc[1]["test"] == "82.00 ± 2.83" and t.iloc[1]["n"] == 2
    # QAT rows (and an unknown method, which is ignored) appear only when present
    extra = [make_record("rb", "qat-int8", "ad", 0, level=8, method="qat", clean=0.88,
                         robust=0.81),
             make_record("rb", "lowrank-0.5", "ad", 0, method="lowrank", level=0.5)]
    df2 = pd.concat([df, report.collect_metrics(write_records(tmp_path / "x", extra))],
                    ignore_index=True)
    t2 = report.table5(df2, 0.8, 8)
    assert list(t2["model"])[-1] == "T_ad(f_rb^q) (QAT)" and len(t2) == 7
    assert t2.iloc[-1]["test"] == "88.00 ± 0.00" and t2.iloc[-1]["n"] == 1
    assert len(report.table3(df2, 0.8, 8)) == 8


def test_levels_per_dataset(df):
    t = report.table3(df, {"fashion_mnist": 0.8, "cifar10": 0.5}, {"fashion_mnist": 8})
    assert _cell(t, "f_st^p", "test", "ad")["ad"] == "82.00 ± 2.83"
    t = report.table3(df, {"cifar10": 0.5}, 8)  # dataset not in mapping -> n/a
    assert (t[t["model"] == "f_st^p"][["none", "st", "ad"]] == "n/a").all().all()


def test_write_tables(df, tmp_path):
    out = tmp_path / "tables"
    written = report.write_tables(df, out, 0.8, 8)
    names = sorted(p.name for p in written)
    assert names == sorted(f"{s}.{e}" for s in ("table2_baselines", "table3_compressed",
                                                "table5_adversarial_finetuning")
                           for e in ("csv", "md"))
    assert sorted(p.name for p in out.iterdir()) == names  # no temp files left behind
    t3 = pd.read_csv(out / "table3_compressed.csv")
    row = t3[(t3["model"] == "f_st^p") & (t3["performance"] == "test")].iloc[0]
    assert row["ad_mean"] == pytest.approx(82.0) and row["ad_std"] == pytest.approx(2.8284, 1e-4)
    md3 = (out / "table3_compressed.md").read_text(encoding="utf-8")
    assert md3.startswith("Table 3:") and "0.8" in md3.splitlines()[0] and "INT8" in md3
    assert "82.00 ± 2.83" in md3 and "n/a" in md3 and "T_st(·)" in md3
    assert "2/0/2" in md3 and "1/2/2" in md3  # per-column seed counts where they differ
    md2 = (out / "table2_baselines.md").read_text(encoding="utf-8")
    header = [c.strip() for c in md2.split("\n\n")[1].splitlines()[0].strip("|").split("|")]
    assert header == ["Experiment", "Dataset", "Arch", "Model", "n", "Test", "Robustness"]
    assert md2.startswith("Table 2:") and "T_ad(f_st)" in md2
    md5 = (out / "table5_adversarial_finetuning.md").read_text(encoding="utf-8")
    assert md5.startswith("Table 5:") and "T_ad(f_rb^q) (PTQ)" in md5


def test_write_tables_empty(tmp_path):
    empty = report.collect_metrics([])
    written = report.write_tables(empty, tmp_path, 0.8, 8)
    assert all(p.exists() for p in written)
    assert "(no data)" in (tmp_path / "table2_baselines.md").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- figures


def _assert_png(p: Path):
    data = p.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC


def test_figures_are_png(df, tmp_path):
    f1 = report.plot_figure1(df, tmp_path / "fig" / "figure1.png")
    f3 = report.plot_figure3(df, tmp_path / "fig" / "figure3.png")
    _assert_png(f1)
    _assert_png(f3)
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == ["figure1.png", "figure3.png"]


def test_figures_without_data(df, tmp_path):
    _assert_png(report.plot_figure1(report.collect_metrics([]), tmp_path / "empty.png"))
    only_prune = df[df.method != "ptq"]  # PTQ panel says "no data"
    _assert_png(report.plot_figure3(only_prune, tmp_path / "noptq.png"))
