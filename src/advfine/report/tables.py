"""The paper's tables as DataFrames (pure functions, no files): one row per model and
(experiment, dataset, arch) group, those three columns first, numbers beside formatted cells.

* ``table2``: f_st, f_rb, T_ad(f_st) (Table 2);
* ``table3`` (= ``table4``, on cifar10): compressed models x fine-tuning None/T_st/T_ad (Tables 3
  and 4 are the same table for Fashion-MNIST and CIFAR-10);
* ``table5`` (= ``table6``, on cifar10): dense models vs adversarially fine-tuned compressed
  ones, PTQ and QAT (Tables 5 and 6);
* ``computational_gains``: wall time and estimated MACs of full adversarial training (f_rb) vs
  adversarial fine-tuning (T_ad(f_st), T_ad(f_st^p), T_ad(f_st^q)), Sec. 6 "Computational gains";
* ``compute_table`` (not in the paper): one row per model of the experiment with its size, CPU
  inference latency (the deployment stage's) and speed-up over its dense base, the real INT8 model of the PTQ INT8 node
  (latency, accuracy), the cost of its training lineage and the peak memory of its jobs.

Every table carries the number of seeds (``n`` columns); a requested combination with no data is
a row of ``n/a`` cells and NaN numbers (never dropped). Unknown ``method``/``train``/``finetune``
values are left out of the tables that do not use them. The compression levels of Tables 3 and 5
are one value or a {dataset: value} mapping (``level_for``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from advfine.pipeline.vocab import (BASE_MODELS, COMPRESSION_METHODS, CONTROLS, DENSE, FINETUNE_MODES, PRUNE, PTQ, QAT,
                                    QUANTIZATION_METHODS, base_label, model_label)
from advfine.report.collect import METRIC_COLUMNS, STANDARD_STAGES
from advfine.report.labels import (NA, format_bytes, format_cell, format_macs, format_minutes, format_percent,
                                   level_label, stat_cell)
from advfine.report.stats import GROUP_COLS, groups, joined, mean_std, select, summarize

# ----------------------------------------------------------------------------- levels and rows


def level_for(levels: float | Mapping[str, float], dataset: str) -> float | None:
    """A single level, or a {dataset: level} mapping (the paper uses 0.8 on FMNIST, 0.5 on
    CIFAR10). A dataset missing from the mapping gets None (its cells become n/a)."""
    if isinstance(levels, Mapping):
        return levels.get(dataset)
    return levels



def _pick(g: pd.DataFrame, train: str, method: str, finetune: str,
          level: float | None, needs_level: bool) -> pd.DataFrame:
    if needs_level and level is None:
        return g.iloc[0:0]
    return select(g, train, method, finetune, level if needs_level else None)


# ----------------------------------------------------------------------------- tables

_T2_COLS = GROUP_COLS + ["model", "n", "test", "robustness",
                         "test_mean", "test_std", "robust_mean", "robust_std", "diverged", "collapsed", "flagged"]
# Table 3's fine-tuning columns: (finetune, heading).
FT_KEYS = [("none", "None"), ("st", "T_st(·)"), ("ad", "T_ad(·)")]
_T3_COLS = GROUP_COLS + ["model", "performance"] + [
    c for ft, _ in FT_KEYS
    for c in (ft, f"{ft}_mean", f"{ft}_std", f"{ft}_n", f"{ft}_diverged", f"{ft}_collapsed", f"{ft}_flagged")]


def _row(keys: tuple, label: str, s: dict) -> dict:
    return {
        **dict(zip(GROUP_COLS, keys)), "model": label, "n": s["n"],
        "test": stat_cell(s, "test"), "robustness": stat_cell(s, "robust"),
        "test_mean": s["test_mean"], "test_std": s["test_std"],
        "robust_mean": s["robust_mean"], "robust_std": s["robust_std"],
        "diverged": s["diverged"], "collapsed": s["collapsed"], "flagged": s["flagged"],
    }


def table2(df: pd.DataFrame) -> pd.DataFrame:
    """Table 2, baselines: f_st, f_rb (dense, no fine-tuning) and T_ad(f_st) (the dense standard
    model fine-tuned adversarially; n/a when not run)."""
    rows = []
    for keys, g in groups(df):
        for train, finetune in (("st", "none"), ("rb", "none"), ("st", "ad")):
            rows.append(_row(keys, model_label(train, DENSE, finetune),
                             summarize(select(g, train, DENSE, finetune))))
    return pd.DataFrame(rows, columns=_T2_COLS)


def table3(df: pd.DataFrame, prune_level: float | Mapping[str, float],
           ptq_bits: int | Mapping[str, int]) -> pd.DataFrame:
    """Tables 3 (Fashion-MNIST) and 4 (CIFAR10): compressed models f_st^p, f_st^q, f_rb^p,
    f_rb^q (q = PTQ) x fine-tuning None/T_st/T_ad, each model with a "test" and a "robustness"
    row."""
    rows = []
    for keys, g in groups(df):
        dataset = keys[1]
        for train in ("st", "rb"):
            for method, lev in ((PRUNE, level_for(prune_level, dataset)),
                                (PTQ, level_for(ptq_bits, dataset))):
                stats = {ft: summarize(_pick(g, train, method, ft, lev, True))
                         for ft, _ in FT_KEYS}
                for perf, key in (("test", "test"), ("robustness", "robust")):
                    row = {**dict(zip(GROUP_COLS, keys)), "model": base_label(train, method),
                           "performance": perf}
                    for ft, _ in FT_KEYS:
                        s = stats[ft]
                        row[ft] = stat_cell(s, key)
                        row[f"{ft}_mean"] = s[f"{key}_mean"]
                        row[f"{ft}_std"] = s[f"{key}_std"]
                        row[f"{ft}_n"] = s["n"]
                        row[f"{ft}_diverged"], row[f"{ft}_flagged"] = s["diverged"], s["flagged"]
                        row[f"{ft}_collapsed"] = s["collapsed"]
                    rows.append(row)
    return pd.DataFrame(rows, columns=_T3_COLS)


table4 = table3  # the paper's Table 4 is Table 3 on CIFAR10


def table5(df: pd.DataFrame, prune_level: float | Mapping[str, float],
           ptq_bits: int | Mapping[str, int]) -> pd.DataFrame:
    """Tables 5 (Fashion-MNIST) and 6 (CIFAR10): dense base models vs adversarially fine-tuned
    compressed ones: f_st, T_ad(f_st^p), T_ad(f_st^q) (PTQ), f_rb, T_ad(f_rb^p), T_ad(f_rb^q) (PTQ),
    T_ad(f_rb^q) (QAT) (method qat at the PTQ bit width; n/a when not run). A T_ad(f_st^q) (QAT)
    row (not in the paper) follows the PTQ one when such models exist."""
    rows = []
    for keys, g in groups(df):
        dataset = keys[1]
        p_lev, q_bits = level_for(prune_level, dataset), level_for(ptq_bits, dataset)
        for train in ("st", "rb"):
            rows.append(_row(keys, base_label(train), summarize(select(g, train, DENSE, "none"))))
            specs = [(PRUNE, p_lev), (PTQ, q_bits)]
            if train == "rb" or ((g["train"] == train) & (g["method"] == QAT)).any():
                specs.append((QAT, q_bits))
            for method, lev in specs:
                s = summarize(_pick(g, train, method, "ad", lev, True))
                rows.append(_row(keys, model_label(train, method, "ad", quant_kind=True), s))
    return pd.DataFrame(rows, columns=_T2_COLS)


table6 = table5  # the paper's Table 6 is Table 5 on CIFAR10

# ------------------------------------------------------------------------- computational gains

# (train, method, finetune, the adversarial stage): f_rb, T_ad(f_st), T_ad(f_st^p), T_ad(f_st^q)
_GAIN_ROWS = [
    ("rb", DENSE, "none", "train_base"),
    ("st", DENSE, "ad", "finetune"),
    ("st", PRUNE, "ad", "finetune"),
    ("st", PTQ, "ad", "finetune"),
]
_GAIN_COLS = GROUP_COLS + [
    "model", "adversarial_stage", "n",
    "adv_wall_min", "adv_wall_min_mean", "adv_wall_min_std", "adv_time_ratio",
    "adv_macs", "adv_macs_mean", "adv_macs_ratio",
    "lineage_wall_min", "lineage_wall_min_mean", "lineage_wall_min_std", "lineage_time_ratio",
    "lineage_macs_mean", "lineage_macs_ratio", "device",
]


def _lineage_stages(df: pd.DataFrame) -> list[str]:
    """Every stage with a ``<stage>_wall_time_s`` column (standard ones first)."""
    found = [c[: -len("_wall_time_s")] for c in df.columns
             if c.endswith("_wall_time_s") and c != "eval_wall_time_s"]
    return [s for s in STANDARD_STAGES if s in found] + sorted(set(found) - set(STANDARD_STAGES))


def _lineage_totals(rows: pd.DataFrame, stages: list[str]) -> tuple[pd.Series, pd.Series]:
    """Per model: total wall time (s) of the stages in its lineage, and their total estimated
    MACs (NaN if any of those stages lacks its MACs). A stage is in the lineage when its wall
    time is recorded."""
    walls = rows[[f"{s}_wall_time_s" for s in stages]].astype(float)
    macs = rows.reindex(columns=[f"{s}_estimated_macs" for s in stages]).astype(float)
    in_lineage = walls.notna().to_numpy()
    macs_known = macs.notna().to_numpy()
    total_wall = walls.sum(axis=1, min_count=1)
    total_macs = pd.Series(np.where(in_lineage, macs.fillna(0.0).to_numpy(), 0.0).sum(axis=1),
                           index=rows.index)
    total_macs[(in_lineage & ~macs_known).any(axis=1) | ~in_lineage.any(axis=1)] = math.nan
    return total_wall, total_macs


def computational_gains(df: pd.DataFrame, prune_level: float | Mapping[str, float],
                        ptq_bits: int | Mapping[str, int]) -> pd.DataFrame:
    """Sec. 6 "Computational gains" (the paper: 118 min adversarial training vs 14 min adversarial
    fine-tuning vs 10 min for a compressed model, CIFAR10) from the recorded ``stages``.

    Rows: f_rb (its adversarial stage: train_base), T_ad(f_st), T_ad(f_st^p), T_ad(f_st^q) (PTQ)
    at the report levels (adversarial stage: finetune). Columns: the adversarial stage's wall
    time in minutes (mean ± std over seeds) and estimated MACs (mean), each with its ratio to
    f_rb's (ratio of means); the whole lineage's wall time (standard training + compression +
    fine-tuning; for f_rb its adversarial training) and estimated MACs with ratios; the device(s)
    the adversarial stage ran on. n/a when missing."""
    stages = _lineage_stages(df)
    rows = []
    for keys, g in groups(df):
        dataset = keys[1]
        levels = {PRUNE: level_for(prune_level, dataset), PTQ: level_for(ptq_bits, dataset)}
        group_rows = []
        for train, method, finetune, stage in _GAIN_ROWS:
            sel = _pick(g, train, method, finetune, levels.get(method), method != DENSE)
            adv_wall = sel.get(f"{stage}_wall_time_s", pd.Series(dtype=float)) / 60.0
            adv_macs = sel.get(f"{stage}_estimated_macs", pd.Series(dtype=float))
            devices = sel.get(f"{stage}_device", pd.Series(dtype=object)).dropna().unique()
            total_wall, total_macs = _lineage_totals(sel, stages)
            adv_mean, adv_std = mean_std(adv_wall)
            lin_mean, lin_std = mean_std(total_wall / 60.0)
            macs_mean, lin_macs_mean = mean_std(adv_macs)[0], mean_std(total_macs)[0]
            group_rows.append({
                **dict(zip(GROUP_COLS, keys)),
                "model": model_label(train, method, finetune, quant_kind=True),
                "adversarial_stage": stage,
                "n": int(sel["seed"].nunique()),
                "adv_wall_min": format_minutes(adv_mean, adv_std),
                "adv_wall_min_mean": adv_mean, "adv_wall_min_std": adv_std,
                "adv_macs": format_macs(macs_mean), "adv_macs_mean": macs_mean,
                "lineage_wall_min": format_minutes(lin_mean, lin_std),
                "lineage_wall_min_mean": lin_mean, "lineage_wall_min_std": lin_std,
                "lineage_macs_mean": lin_macs_mean,
                "device": ", ".join(sorted(map(str, devices))) or NA,
            })
        ref = group_rows[0]  # f_rb: full adversarial training
        for r in group_rows:
            r["adv_time_ratio"] = _ratio(r["adv_wall_min_mean"], ref["adv_wall_min_mean"])
            r["adv_macs_ratio"] = _ratio(r["adv_macs_mean"], ref["adv_macs_mean"])
            r["lineage_time_ratio"] = _ratio(r["lineage_wall_min_mean"], ref["lineage_wall_min_mean"])
            r["lineage_macs_ratio"] = _ratio(r["lineage_macs_mean"], ref["lineage_macs_mean"])
        rows += group_rows
    return pd.DataFrame(rows, columns=_GAIN_COLS)


def _ratio(value: float, reference: float) -> float:
    if math.isnan(value) or math.isnan(reference) or reference == 0:
        return math.nan
    return value / reference


# ----------------------------------------------------------------------------- compute table

_COMPUTE_COLS = GROUP_COLS + [
    "model", "train", "compression", "method", "level", "finetune", "compression_level", "n",
    "params_mean", "macs_mean", "macs", "weight_bytes_mean", "weight_size",
    "checkpoint_bytes_mean", "checkpoint_size",
    "latency_ms", "latency_ms_mean", "latency_ms_std", "latency_speedup",
    "latency_iqr_ms_mean", "latency_batch", "latency_threads", "latency_rounds", "precision",
    "int8_n", "int8_latency_ms", "int8_latency_ms_mean", "int8_latency_ms_std", "int8_speedup",
    "int8_clean_acc", "int8_clean_acc_mean", "int8_clean_acc_std",
    "fake_quant_clean_acc", "fake_quant_clean_acc_mean", "fake_quant_clean_acc_std",
    "int8_robust_acc", "int8_robust_acc_mean", "int8_robust_acc_std",
    "fake_quant_robust_acc", "fake_quant_robust_acc_mean", "fake_quant_robust_acc_std",
    "int8_agreement", "int8_agreement_mean", "int8_agreement_min", "int8_model_bytes_mean",
    "lineage_wall_min", "lineage_wall_min_mean", "lineage_wall_min_std",
    "lineage_macs", "lineage_macs_mean",
    "peak_rss_mb", "peak_rss_mb_mean", "peak_rss_mb_std",
    "eval_s", "eval_s_mean", "eval_s_std",
]
# Row order of the compute table: the other tables' order (st before rb; dense, pruning, PTQ,
# QAT; no fine-tuning, T_st, T_ad), unknown values after the known ones, alphabetically.
_TRAIN_ORDER = {train: i for i, train in enumerate(BASE_MODELS)}
_METHOD_ORDER = {method: i for i, method in enumerate(COMPRESSION_METHODS)}
_FINETUNE_ORDER = {finetune: i for i, finetune in enumerate([*FINETUNE_MODES, *CONTROLS])}


def models_in_order(df: pd.DataFrame):
    """(group keys, group rows, (train, compression, method, level, finetune), the model's rows) for
    every model of every (experiment, dataset, arch) group, in ``model_sort_key`` order."""
    model_cols = ["train", "compression", "method", "level", "finetune"]
    for keys, g in groups(df):
        models = sorted(g.groupby(model_cols, dropna=False, sort=False),
                        key=lambda kv: model_sort_key(kv[0][0], kv[0][2], kv[0][3], kv[0][4]))
        for model, sel in models:
            yield keys, g, model, sel


def model_sort_key(train: str, method: str, level: float, finetune: str) -> tuple:
    """Models by train, method, level, finetune; levels from the least to the most compressed
    (sparsity ascending, bit widths descending: INT16 ... INT1)."""
    lev = -math.inf if pd.isna(level) else (-level if method in QUANTIZATION_METHODS else level)
    return (_TRAIN_ORDER.get(train, len(_TRAIN_ORDER)), str(train),
            _METHOD_ORDER.get(method, len(_METHOD_ORDER)), str(method), lev,
            _FINETUNE_ORDER.get(finetune, len(_FINETUNE_ORDER)), str(finetune))


def compression_level_text(method: str, level: float) -> str:
    """``level_label``, with an unknown method named instead of called a sparsity."""
    if method in _METHOD_ORDER or pd.isna(level):
        return level_label(method, None if pd.isna(level) else float(level))
    return f"{method} {level:g}"


def _lineage_peak_rss(rows: pd.DataFrame, stages: list[str]) -> pd.Series:
    """Per model: the peak resident memory (MB) over its lineage's stages and its evaluation; NaN
    if the evaluation or any stage in the lineage (wall time recorded) lacks it."""
    walls = rows[[f"{s}_wall_time_s" for s in stages]].astype(float)
    peaks = rows.reindex(columns=[f"{s}_peak_rss_mb" for s in stages]).astype(float)
    in_lineage = walls.notna().to_numpy()
    known = peaks.notna().to_numpy()
    stage_peak = np.where(in_lineage & known, peaks.to_numpy(), -math.inf).max(
        axis=1, initial=-math.inf)
    eval_peak = rows.reindex(columns=["peak_rss_mb"])["peak_rss_mb"].astype(float).to_numpy()
    peak = pd.Series(np.maximum(stage_peak, eval_peak), index=rows.index)
    peak[(in_lineage & ~known).any(axis=1) | np.isnan(eval_peak)] = math.nan
    return peak


def compute_table(df: pd.DataFrame) -> pd.DataFrame:
    """Compute and memory cost of every model of the experiment (not in the paper): one row per
    evaluated node (train x compression x finetune: f_st, f_rb, f_st^p at every sparsity with
    None/T_st/T_ad, the PTQ and QAT nodes at every bit width, T_ad(f_st), ...), ordered by train,
    method, level, finetune (``model_sort_key``).

    Columns (each a mean over seeds, ``*_std`` the sample std; formatted text beside the numbers):
    parameters, MACs per input, weight and checkpoint bytes; the CPU inference latency (ms, the
    deployment record's median over rounds; ``latency_iqr_ms_mean`` its interquartile range) and its
    speed-up, the ratio of means of the dense model of the same base training without fine-tuning
    (f_st / f_rb) to this model; for nodes with an ``int8`` record (the PTQ INT8 node), the real
    INT8 model's latency, speed-up over that same dense model, clean accuracy (%) beside the
    fake-quant model's, agreement and serialized size; the whole lineage's wall time (minutes)
    and estimated MACs (as in ``computational_gains``); the peak resident memory (MB) over the
    lineage's stages and the evaluation (``_lineage_peak_rss``). n/a / NaN where not recorded."""
    df = df.reindex(columns=list(dict.fromkeys([*df.columns, *METRIC_COLUMNS])))  # older CSVs
    stages = _lineage_stages(df)
    rows = []
    for keys, g, (train, compression, method, level, finetune), sel in models_in_order(df):
        dense = select(g, train, DENSE, "none")
        ref_latency = mean_std(dense["latency_ms"])[0]
        lat_mean, lat_std = mean_std(sel["latency_ms"])
        i8_mean, i8_std = mean_std(sel["int8_latency_ms"])
        acc_mean, acc_std = mean_std(sel["int8_clean_acc"] * 100.0)
        fq_mean, fq_std = mean_std(sel["int8_fake_quant_clean_acc"] * 100.0)
        # the deployed model's worst case (transfer, Square) beside the fake-quant model's suite, on the same
        # test images (evaluate.int8_robust_images; records without the key attacked every image)
        i8r_mean, i8r_std = mean_std(sel["int8_robust_acc"] * 100.0)
        with_int8 = sel[sel["int8_robust_acc"].notna()]
        fqr_mean, fqr_std = mean_std(with_int8["int8_fake_quant_robust_acc"].fillna(with_int8["robust_acc"]) * 100.0)
        total_wall, total_macs = _lineage_totals(sel, stages)
        lin_mean, lin_std = mean_std(total_wall / 60.0)
        lin_macs = mean_std(total_macs)[0]
        peak_mean, peak_std = mean_std(_lineage_peak_rss(sel, stages))
        eval_mean, eval_std = mean_std(sel["eval_wall_time_s"])
        macs_mean = mean_std(sel["macs"])[0]
        weight_mean = mean_std(sel["weight_bytes"])[0]
        ckpt_mean = mean_std(sel["checkpoint_bytes"])[0]
        rows.append({
            **dict(zip(GROUP_COLS, keys)),
            "model": model_label(train, method, finetune, quant_kind=True),
            "train": train, "compression": compression, "method": method, "level": level,
            "finetune": finetune, "compression_level": compression_level_text(method, level),
            "n": int(sel["seed"].nunique()),
            "params_mean": mean_std(sel["params"])[0],
            "macs_mean": macs_mean, "macs": format_macs(macs_mean),
            "weight_bytes_mean": weight_mean, "weight_size": format_bytes(weight_mean),
            "checkpoint_bytes_mean": ckpt_mean, "checkpoint_size": format_bytes(ckpt_mean),
            "latency_ms": format_minutes(lat_mean, lat_std),
            "latency_ms_mean": lat_mean, "latency_ms_std": lat_std,
            "latency_speedup": _ratio(ref_latency, lat_mean),
            "latency_iqr_ms_mean": mean_std(sel["latency_iqr_ms"])[0],
            "latency_batch": joined(sel["latency_batch"]),
            "latency_threads": joined(sel["latency_threads"]),
            "latency_rounds": joined(sel["latency_rounds"]),
            "precision": joined(sel["precision"]),
            "int8_n": int(sel.loc[sel["int8_latency_ms"].notna()
                                  | sel["int8_clean_acc"].notna(), "seed"].nunique()),
            "int8_latency_ms": format_minutes(i8_mean, i8_std),
            "int8_latency_ms_mean": i8_mean, "int8_latency_ms_std": i8_std,
            "int8_speedup": _ratio(ref_latency, i8_mean),
            "int8_clean_acc": format_cell(acc_mean, acc_std),
            "int8_clean_acc_mean": acc_mean, "int8_clean_acc_std": acc_std,
            "fake_quant_clean_acc": format_cell(fq_mean, fq_std),
            "fake_quant_clean_acc_mean": fq_mean, "fake_quant_clean_acc_std": fq_std,
            "int8_robust_acc": format_cell(i8r_mean, i8r_std),
            "int8_robust_acc_mean": i8r_mean, "int8_robust_acc_std": i8r_std,
            "fake_quant_robust_acc": format_cell(fqr_mean, fqr_std),
            "fake_quant_robust_acc_mean": fqr_mean, "fake_quant_robust_acc_std": fqr_std,
            "int8_agreement": format_percent(sel["int8_agreement"].min() * 100.0),
            "int8_agreement_mean": mean_std(sel["int8_agreement"] * 100.0)[0],
            "int8_agreement_min": sel["int8_agreement"].min() * 100.0,
            "int8_model_bytes_mean": mean_std(sel["int8_model_bytes"])[0],
            "lineage_wall_min": format_minutes(lin_mean, lin_std),
            "lineage_wall_min_mean": lin_mean, "lineage_wall_min_std": lin_std,
            "lineage_macs": format_macs(lin_macs), "lineage_macs_mean": lin_macs,
            "peak_rss_mb": format_minutes(peak_mean, peak_std),
            "peak_rss_mb_mean": peak_mean, "peak_rss_mb_std": peak_std,
            "eval_s": format_minutes(eval_mean, eval_std), "eval_s_mean": eval_mean, "eval_s_std": eval_std,
        })
    return pd.DataFrame(rows, columns=_COMPUTE_COLS)
