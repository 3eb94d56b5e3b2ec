"""Turn per-model ``eval.json`` files into the paper's tables and figures.

Pipeline (all pure functions except the ``write_*``/``plot_*`` writers):

    df = collect_metrics(paths)                 # one row per eval.json, flat columns
    write_metrics_csv(df, "all_metrics.csv")
    write_tables(df, out_dir, 0.8, 8)           # table_names(dataset), each as .csv, .md, .tex
    plot_figures(df, fig_dir)                   # FIGURES: Figures 1, 3, 4 as .png and .pdf
    plot_figure1(df, "f1.png", "f1.pdf")        # ... or one figure at a time

One experiment (one config) holds one dataset. For it ``write_tables`` writes the paper's
tables (stems from ``table_names(dataset)``):

* ``table2_baselines``: f_st, f_rb, T_ad(f_st) (Table 2);
* ``table3_compressed`` / ``table4_compressed`` (on cifar10): compressed models x fine-tuning
  None/T_st/T_ad (Tables 3 and 4 are the same table for Fashion-MNIST and CIFAR-10);
* ``table5_adversarial_finetuning`` / ``table6_adversarial_finetuning`` (on cifar10): dense
  models vs adversarially fine-tuned compressed ones, PTQ and QAT (Tables 5 and 6);
* ``computational_gains``: wall time and estimated MACs of full adversarial training (f_rb) vs
  adversarial fine-tuning (T_ad(f_st), T_ad(f_st^p), T_ad(f_st^q)), Sec. 6 "Computational gains";
* ``compute`` (not in the paper): one row per model of the experiment with its size, CPU
  inference latency and speed-up over its dense base, the real INT8 model of the PTQ INT8 node
  (latency, accuracy), the cost of its training lineage and the peak memory of its jobs.

Figures (PNG, and PDF when a PDF path is given): Figure 1 (accuracy vs pruning sparsity and vs
bit width after adversarial fine-tuning), Figure 3 (the same without fine-tuning), Figure 4
(QAT robust models f_rb^q vs bit width, no fine-tuning). Figure 2 (t-SNE) is in ``features``.

Conventions
-----------
* Accuracies are stored as fractions in eval.json and reported in percent.
* A cell is the mean and the sample standard deviation (ddof=1) over seeds; with a single seed
  the std is shown as 0.00.  Every table carries the number of seeds (``n`` columns).
* A requested combination with no data is shown as ``n/a`` (never dropped).
* Tables are computed separately for each (experiment, dataset, arch) group; those three
  columns lead every CSV table. Markdown and LaTeX follow the paper's layout (with the ``n``
  column added) and name dataset and architecture in the caption.
* Model labels follow the paper in plain text: ``f_st``, ``f_rb^p``, ``T_ad(f_st^q) (PTQ)``...
  (``^p`` = pruned, ``^q`` = quantized, ``T_st``/``T_ad`` = standard/adversarial fine-tuning);
  LaTeX renders them as math (``$\\mathcal{T}_{ad}(f_{st}^{q})$ (PTQ)``).
* Unknown ``method``/``train``/``finetune`` values are carried in the DataFrame but are left
  out of tables and figures that do not use them.
* eval.json files written before a key existed still load: missing per-stage
  ``estimated_macs``/``adversarial``/``device``/``peak_rss_mb``, ``attack.eps_space``/``eps_pixel``
  and the top-level ``latency_*``/``peak_rss_mb``/``precision``/``int8`` become NaN/NA, and the
  cells that need them n/a.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from .artifacts import atomic_path
from .outputs import TABLE_FORMATS, table_names  # noqa: F401  (table_names is part of this API)

# ----------------------------------------------------------------------------- constants

GROUP_COLS = ["experiment", "dataset", "arch"]
STANDARD_STAGES = ["train_base", "compress", "finetune"]
# Per-stage columns "<stage>_<field>" taken from each entry of eval.json's "stages".
STAGE_FIELDS = ["wall_time_s", "estimated_macs", "adversarial", "device", "peak_rss_mb"]
NA = "n/a"

DATASET_NAMES = {"digits": "Digits", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR10"}
ARCH_NAMES = {"cnn8": "8-layer CNN", "resnet18": "ResNet-18"}

# Top-level keys every eval.json must have, with the accepted Python types.
_NUM = (int, float)
REQUIRED_KEYS: dict[str, tuple[type, ...]] = {
    "experiment": (str,),
    "dataset": (str,),
    "arch": (str,),
    "seed": (int,),
    "train": (str,),
    "compression": (str,),
    "method": (str,),
    "level": (int, float, type(None)),
    "finetune": (str,),
    "clean_acc": _NUM,
    "robust_acc": _NUM,
    "n_test": (int,),
    "params": (int,),
    "macs": (int,),
    "checkpoint_bytes": (int,),
    "weight_bytes": (int,),
    "device": (str,),
    "eval_wall_time_s": _NUM,
    "stages": (list,),
    "provenance": (dict,),
    "attack": (dict,),
}

# Columns copied verbatim from the top level of eval.json, in DataFrame order.
_FLAT_COLS = [
    "experiment", "dataset", "arch", "seed", "train", "compression", "method", "level",
    "finetune", "clean_acc", "robust_acc", "n_test", "params", "macs", "checkpoint_bytes",
    "weight_bytes", "device", "eval_wall_time_s",
]
# Optional top-level keys (eval.json files written before them lack them; null = not measured):
# column -> (key path in eval.json, kind). Kinds: "number" (>= 0), "fraction" (in [0, 1]),
# "count" (int >= 1), "bytes" (int >= 0), "str". ``int8`` is null or an object of the int8_* keys.
OPTIONAL_KEYS: dict[str, tuple[tuple[str, ...], str]] = {
    "precision": (("precision",), "str"),
    "latency_ms": (("latency_ms",), "number"),
    "latency_batch": (("latency_batch",), "count"),
    "latency_threads": (("latency_threads",), "count"),
    "peak_rss_mb": (("peak_rss_mb",), "number"),
    "int8_clean_acc": (("int8", "clean_acc"), "fraction"),
    "int8_fake_quant_clean_acc": (("int8", "fake_quant_clean_acc"), "fraction"),
    "int8_agreement": (("int8", "agreement"), "fraction"),
    "int8_latency_ms": (("int8", "latency_ms"), "number"),
    "int8_model_bytes": (("int8", "model_bytes"), "bytes"),
}
_OPTIONAL_INT_COLS = [c for c, (_, kind) in OPTIONAL_KEYS.items() if kind in ("count", "bytes")]
_OPTIONAL_FLOAT_COLS = [c for c, (_, kind) in OPTIONAL_KEYS.items()
                        if kind in ("number", "fraction")]
METRIC_COLUMNS = (
    _FLAT_COLS
    + list(OPTIONAL_KEYS)
    + [f"{s}_{field}" for field in STAGE_FIELDS for s in STANDARD_STAGES]
    + ["git_commit", "config_hash", "attack_eps", "attack_step_size", "attack_steps",
       "attack_eps_space", "attack_eps_pixel", "path"]
)
_SORT_COLS = ["experiment", "dataset", "arch", "train", "method", "level", "finetune", "seed",
              "compression"]
_KEY_COLS = ["experiment", "dataset", "arch", "train", "compression", "method", "level",
             "finetune", "seed"]


class MetricsFileError(ValueError):
    """An eval.json that cannot be read or lacks/mistypes a required key."""


# ----------------------------------------------------------------------------- collecting


def _is_number(value) -> bool:
    # bool is an int subclass; never accept it for a numeric field.
    return isinstance(value, _NUM) and not isinstance(value, bool)


def _stage_row(path: Path, i: int, st) -> dict:
    """The ``<stage>_<field>`` columns of one entry of "stages"; optional fields may be absent."""
    where = f"{path}: key 'stages'[{i}]"
    if not (isinstance(st, dict) and isinstance(st.get("stage"), str)
            and _is_number(st.get("wall_time_s"))):
        raise MetricsFileError(f"{where} must be {{'stage': str, 'wall_time_s': number, ...}}")
    macs, adversarial, device = st.get("estimated_macs"), st.get("adversarial"), st.get("device")
    peak = st.get("peak_rss_mb")
    if macs is not None and not _is_number(macs):
        raise MetricsFileError(f"{where}: 'estimated_macs' must be a number, got {macs!r}")
    if peak is not None and not (_is_number(peak) and peak >= 0):
        raise MetricsFileError(f"{where}: 'peak_rss_mb' must be a number >= 0, got {peak!r}")
    if adversarial is not None and not isinstance(adversarial, bool):
        raise MetricsFileError(f"{where}: 'adversarial' must be true or false, got {adversarial!r}")
    if device is not None and not isinstance(device, str):
        raise MetricsFileError(f"{where}: 'device' must be a string, got {device!r}")
    name = st["stage"]
    return {f"{name}_wall_time_s": float(st["wall_time_s"]),
            f"{name}_estimated_macs": math.nan if macs is None else float(macs),
            f"{name}_adversarial": adversarial,
            f"{name}_device": device,
            f"{name}_peak_rss_mb": math.nan if peak is None else float(peak)}


_KIND_TEXT = {"number": "a number >= 0", "fraction": "a fraction in [0, 1]",
              "count": "an integer >= 1", "bytes": "an integer >= 0", "str": "a string"}


def _kind_ok(value, kind: str) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind in ("count", "bytes"):
        return (isinstance(value, int) and not isinstance(value, bool)
                and value >= (1 if kind == "count" else 0))
    if not _is_number(value) or math.isnan(value):
        return False
    return value >= 0 and (kind != "fraction" or value <= 1)


def _optional_row(path: Path, rec: dict) -> dict:
    """The ``OPTIONAL_KEYS`` columns of one eval.json: None where a key is absent or null; a value
    of the wrong type (or out of range) raises MetricsFileError naming the file and the key."""
    int8 = rec.get("int8")
    if int8 is not None and not isinstance(int8, dict):
        raise MetricsFileError(f"{path}: key 'int8' has type {type(int8).__name__}, expected "
                               "object or null")
    row = {}
    for col, (keys, kind) in OPTIONAL_KEYS.items():
        value = (int8 or {}).get(keys[1]) if keys[0] == "int8" else rec.get(keys[0])
        if value is not None and not _kind_ok(value, kind):
            raise MetricsFileError(f"{path}: key '{'.'.join(keys)}' must be {_KIND_TEXT[kind]} or "
                                   f"null, got {value!r} ({type(value).__name__})")
        row[col] = value
    return row


def _load_one(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"eval file not found: {path}")
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MetricsFileError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(rec, dict):
        raise MetricsFileError(f"{path}: top level must be a JSON object, got {type(rec).__name__}")

    for key, types in REQUIRED_KEYS.items():
        if key not in rec:
            raise MetricsFileError(f"{path}: missing required key '{key}'")
        val = rec[key]
        if isinstance(val, bool) or not isinstance(val, types):
            raise MetricsFileError(
                f"{path}: key '{key}' has type {type(val).__name__}, expected "
                + " or ".join("null" if t is type(None) else t.__name__ for t in types))
    for key in ("clean_acc", "robust_acc"):
        if not 0.0 <= float(rec[key]) <= 1.0:
            raise MetricsFileError(f"{path}: key '{key}' = {rec[key]} is not a fraction in [0, 1]")

    row = {k: rec[k] for k in _FLAT_COLS}
    row["level"] = math.nan if rec["level"] is None else float(rec["level"])
    row.update(_optional_row(path, rec))
    seen: set[str] = set()
    for i, st in enumerate(rec["stages"]):
        stage_cols = _stage_row(path, i, st)
        if st["stage"] in seen:
            raise MetricsFileError(f"{path}: key 'stages' lists stage '{st['stage']}' twice")
        seen.add(st["stage"])
        row.update(stage_cols)
    prov, attack = rec["provenance"], rec["attack"]
    row["git_commit"] = prov.get("git_commit")
    row["config_hash"] = prov.get("config_hash")
    row["attack_eps"] = attack.get("eps")
    row["attack_step_size"] = attack.get("step_size")
    row["attack_steps"] = attack.get("steps")
    row["attack_eps_space"] = attack.get("eps_space")
    row["attack_eps_pixel"] = attack.get("eps_pixel")
    row["path"] = str(path)
    return row


def collect_metrics(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Read eval.json files into one DataFrame, one row per file.

    Columns: ``METRIC_COLUMNS`` (+ ``<stage>_<field>`` for any non-standard stage). Per stage:
    ``_wall_time_s``, ``_estimated_macs`` and ``_peak_rss_mb`` (float, NaN when the stage is not
    in the model's lineage or the file predates the key), ``_adversarial`` (nullable boolean),
    ``_device``. The evaluation's ``OPTIONAL_KEYS`` (``latency_ms``, ``peak_rss_mb``, ``int8_*``
    ...) are float, or nullable Int64 for ``latency_batch``/``latency_threads``/
    ``int8_model_bytes``; NaN/NA where the file lacks them (``int8_*``: every node but PTQ INT8).
    Rows are sorted by experiment, dataset, arch, train, method, level, finetune, seed.
    Raises ``FileNotFoundError`` / ``MetricsFileError`` naming the offending file (and key), and
    ``MetricsFileError`` if two files describe the same model (same key columns and seed).
    """
    rows = [_load_one(Path(p)) for p in paths]
    df = pd.DataFrame(rows)
    extra = sorted(set(df.columns) - set(METRIC_COLUMNS)) if rows else []
    df = df.reindex(columns=METRIC_COLUMNS + extra)
    if df.empty:
        return df
    for key, same in df.groupby(_KEY_COLS, dropna=False, sort=True):
        if len(same) > 1:
            raise MetricsFileError(
                "several eval files describe the same model (" + ", ".join(
                    f"{k}={v}" for k, v in zip(_KEY_COLS, key)) + "): " + ", ".join(same["path"]))
    for col in ("seed", "n_test", "params", "macs", "checkpoint_bytes", "weight_bytes"):
        df[col] = df[col].astype("int64")
    for col in df.columns:
        if col.endswith("_adversarial"):
            df[col] = df[col].astype("boolean")
        elif (col.endswith(("_wall_time_s", "_estimated_macs", "_peak_rss_mb"))
              or col in ("attack_eps_pixel", *_OPTIONAL_FLOAT_COLS)):
            df[col] = df[col].astype(float)
        elif col in _OPTIONAL_INT_COLS:
            df[col] = df[col].astype("Int64")
    df = df.sort_values(_SORT_COLS, na_position="first", kind="mergesort")
    return df.reset_index(drop=True)


# ----------------------------------------------------------------------------- labels


def base_label(train: str, method: str = "dense") -> str:
    """Paper notation of a (possibly compressed) base model: f_st, f_rb^p, f_st^q, ..."""
    sup = {"dense": "", "prune": "^p", "ptq": "^q", "qat": "^q"}.get(method, f"^{method}")
    return f"f_{train}{sup}"


def model_label(train: str, method: str = "dense", finetune: str = "none",
                quant_kind: bool = False) -> str:
    """Full label: ``T_ad(f_st^p)``; with ``quant_kind`` quantized models get " (PTQ)"/" (QAT)"."""
    label = base_label(train, method)
    if finetune != "none":
        label = f"T_{finetune}({label})"
    if quant_kind and method in ("ptq", "qat"):
        label += f" ({method.upper()})"
    return label


def level_label(method: str, level: float | None) -> str:
    """``sparsity 0.8`` / ``INT8`` / ``dense``."""
    if method == "dense" or level is None or (isinstance(level, float) and math.isnan(level)):
        return "dense"
    if method in ("ptq", "qat"):
        return f"INT{int(level)}"
    return f"sparsity {level:g}"


def dataset_name(dataset: str) -> str:
    """Display name: ``fashion_mnist`` -> ``Fashion-MNIST`` (unknown names unchanged)."""
    return DATASET_NAMES.get(dataset, dataset)


def arch_name(arch: str) -> str:
    """Display name: ``cnn8`` -> ``8-layer CNN`` (unknown names unchanged)."""
    return ARCH_NAMES.get(arch, arch)


# ----------------------------------------------------------------------------- cells


def _select(g: pd.DataFrame, train: str, method: str, finetune: str,
            level: float | None = None) -> pd.DataFrame:
    m = (g["train"] == train) & (g["method"] == method) & (g["finetune"] == finetune)
    if level is not None:
        m &= np.isclose(g["level"].astype(float), float(level))
    return g[m]


def summarize(rows: pd.DataFrame) -> dict:
    """Seed statistics of a set of rows of one model: n, test/robust mean and std in percent.

    Sample std (ddof=1); a single seed gives std 0.0; no rows gives n=0 and NaNs."""
    n = int(rows["seed"].nunique()) if len(rows) else 0
    out: dict = {"n": n}
    for key, col in (("test", "clean_acc"), ("robust", "robust_acc")):
        vals = rows[col].astype(float).to_numpy() * 100.0
        if n == 0:
            mean = std = math.nan
        else:
            mean = float(vals.mean())
            std = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        out[f"{key}_mean"], out[f"{key}_std"] = mean, std
    return out


def _mean_std(values: pd.Series) -> tuple[float, float]:
    """Mean and sample std of the known (non-NaN) values; std 0.0 for one value, NaNs for none."""
    vals = values.astype(float).dropna().to_numpy()
    if len(vals) == 0:
        return math.nan, math.nan
    return float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0


def format_cell(mean: float, std: float) -> str:
    """``"82.00 ± 2.83"``, or ``"n/a"`` when there is no data."""
    if mean is None or std is None or math.isnan(mean) or math.isnan(std):
        return NA
    return f"{mean:.2f} ± {std:.2f}"


def format_minutes(mean: float, std: float) -> str:
    """``"118.20 ± 1.50"``; short runs keep 4 decimals (``"0.0123 ± 0.0004"``); n/a when NaN."""
    if math.isnan(mean) or math.isnan(std):
        return NA
    decimals = 2 if abs(mean) >= 0.1 or mean == 0 else 4
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


_MAC_UNITS = [("EMAC", 1e18), ("PMAC", 1e15), ("TMAC", 1e12), ("GMAC", 1e9), ("MMAC", 1e6),
              ("kMAC", 1e3)]


def format_macs(macs: float) -> str:
    """``1.23e15`` -> ``"1.23 PMAC"``; ``0`` -> ``"0 MAC"``; n/a when NaN."""
    if macs is None or math.isnan(macs):
        return NA
    for unit, scale in _MAC_UNITS:
        if abs(macs) >= scale:
            return f"{macs / scale:.3g} {unit}"
    return f"{macs:.3g} MAC"


def format_ratio(ratio: float) -> str:
    """``"0.12"``; very small ratios in scientific notation (``"3.1e-03"``); n/a when NaN/inf."""
    if ratio is None or not math.isfinite(ratio):
        return NA
    return f"{ratio:.2f}" if ratio == 0 or abs(ratio) >= 0.01 else f"{ratio:.1e}"


def format_speedup(ratio: float) -> str:
    """``"2.00x"``; n/a when NaN/inf."""
    if ratio is None or not math.isfinite(ratio):
        return NA
    return f"{ratio:.2f}x"


def format_bytes(n: float) -> str:
    """``4000`` -> ``"4.0 kB"``, ``2.5e6`` -> ``"2.50 MB"`` (decimal: 1 kB = 1000 bytes); n/a when
    NaN."""
    if n is None or not math.isfinite(n):
        return NA
    return f"{n / 1e6:.2f} MB" if abs(n) >= 1e6 else f"{n / 1e3:.1f} kB"


def format_count(n: float) -> str:
    """``11173962`` -> ``"11,173,962"`` (a mean over seeds is rounded); n/a when NaN."""
    if n is None or not math.isfinite(n):
        return NA
    return f"{round(n):,}"


def _level_for(levels: float | Mapping[str, float], dataset: str) -> float | None:
    """A single level, or a {dataset: level} mapping (the paper uses 0.8 on FMNIST, 0.5 on
    CIFAR10). A dataset missing from the mapping gets None (its cells become n/a)."""
    if isinstance(levels, Mapping):
        return levels.get(dataset)
    return levels


def _groups(df: pd.DataFrame):
    if df.empty:
        return []
    return list(df.groupby(GROUP_COLS, sort=True))


def _pick(g: pd.DataFrame, train: str, method: str, finetune: str,
          level: float | None, needs_level: bool) -> pd.DataFrame:
    if needs_level and level is None:
        return g.iloc[0:0]
    return _select(g, train, method, finetune, level if needs_level else None)


# ----------------------------------------------------------------------------- tables

_T2_COLS = GROUP_COLS + ["model", "n", "test", "robustness",
                         "test_mean", "test_std", "robust_mean", "robust_std"]
_FT_KEYS = [("none", "None"), ("st", "T_st(·)"), ("ad", "T_ad(·)")]
_T3_COLS = GROUP_COLS + ["model", "performance"] + [
    c for ft, _ in _FT_KEYS for c in (ft, f"{ft}_mean", f"{ft}_std", f"{ft}_n")]


def _row(keys: tuple, label: str, s: dict) -> dict:
    return {
        **dict(zip(GROUP_COLS, keys)), "model": label, "n": s["n"],
        "test": format_cell(s["test_mean"], s["test_std"]),
        "robustness": format_cell(s["robust_mean"], s["robust_std"]),
        "test_mean": s["test_mean"], "test_std": s["test_std"],
        "robust_mean": s["robust_mean"], "robust_std": s["robust_std"],
    }


def table2(df: pd.DataFrame) -> pd.DataFrame:
    """Table 2, baselines: f_st, f_rb (dense, no fine-tuning) and T_ad(f_st) (the dense standard
    model fine-tuned adversarially; n/a when not run)."""
    rows = []
    for keys, g in _groups(df):
        rows.append(_row(keys, "f_st", summarize(_select(g, "st", "dense", "none"))))
        rows.append(_row(keys, "f_rb", summarize(_select(g, "rb", "dense", "none"))))
        rows.append(_row(keys, model_label("st", "dense", "ad"),
                         summarize(_select(g, "st", "dense", "ad"))))
    return pd.DataFrame(rows, columns=_T2_COLS)


def table3(df: pd.DataFrame, prune_level: float | Mapping[str, float],
           ptq_bits: int | Mapping[str, int]) -> pd.DataFrame:
    """Tables 3 (Fashion-MNIST) and 4 (CIFAR10): compressed models f_st^p, f_st^q, f_rb^p,
    f_rb^q (q = PTQ) x fine-tuning None/T_st/T_ad, each model with a "test" and a "robustness"
    row."""
    rows = []
    for keys, g in _groups(df):
        dataset = keys[1]
        for train in ("st", "rb"):
            for method, lev in (("prune", _level_for(prune_level, dataset)),
                                ("ptq", _level_for(ptq_bits, dataset))):
                stats = {ft: summarize(_pick(g, train, method, ft, lev, True))
                         for ft, _ in _FT_KEYS}
                for perf, key in (("test", "test"), ("robustness", "robust")):
                    row = {**dict(zip(GROUP_COLS, keys)), "model": base_label(train, method),
                           "performance": perf}
                    for ft, _ in _FT_KEYS:
                        s = stats[ft]
                        row[ft] = format_cell(s[f"{key}_mean"], s[f"{key}_std"])
                        row[f"{ft}_mean"] = s[f"{key}_mean"]
                        row[f"{ft}_std"] = s[f"{key}_std"]
                        row[f"{ft}_n"] = s["n"]
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
    for keys, g in _groups(df):
        dataset = keys[1]
        p_lev, q_bits = _level_for(prune_level, dataset), _level_for(ptq_bits, dataset)
        for train in ("st", "rb"):
            rows.append(_row(keys, base_label(train), summarize(_select(g, train, "dense", "none"))))
            specs = [("prune", p_lev), ("ptq", q_bits)]
            if train == "rb" or ((g["train"] == train) & (g["method"] == "qat")).any():
                specs.append(("qat", q_bits))
            for method, lev in specs:
                s = summarize(_pick(g, train, method, "ad", lev, True))
                rows.append(_row(keys, model_label(train, method, "ad", quant_kind=True), s))
    return pd.DataFrame(rows, columns=_T2_COLS)


table6 = table5  # the paper's Table 6 is Table 5 on CIFAR10

# (label, train, method, finetune, the adversarial stage, level kind)
_GAIN_ROWS = [
    ("f_rb", "rb", "dense", "none", "train_base", None),
    ("T_ad(f_st)", "st", "dense", "ad", "finetune", None),
    ("T_ad(f_st^p)", "st", "prune", "ad", "finetune", "prune"),
    ("T_ad(f_st^q) (PTQ)", "st", "ptq", "ad", "finetune", "ptq"),
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
    for keys, g in _groups(df):
        dataset = keys[1]
        levels = {"prune": _level_for(prune_level, dataset), "ptq": _level_for(ptq_bits, dataset)}
        group_rows = []
        for label, train, method, finetune, stage, kind in _GAIN_ROWS:
            sel = _pick(g, train, method, finetune, levels.get(kind), kind is not None)
            adv_wall = sel.get(f"{stage}_wall_time_s", pd.Series(dtype=float)) / 60.0
            adv_macs = sel.get(f"{stage}_estimated_macs", pd.Series(dtype=float))
            devices = sel.get(f"{stage}_device", pd.Series(dtype=object)).dropna().unique()
            total_wall, total_macs = _lineage_totals(sel, stages)
            adv_mean, adv_std = _mean_std(adv_wall)
            lin_mean, lin_std = _mean_std(total_wall / 60.0)
            macs_mean, lin_macs_mean = _mean_std(adv_macs)[0], _mean_std(total_macs)[0]
            group_rows.append({
                **dict(zip(GROUP_COLS, keys)), "model": label, "adversarial_stage": stage,
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


_COMPUTE_COLS = GROUP_COLS + [
    "model", "train", "compression", "method", "level", "finetune", "compression_level", "n",
    "params_mean", "macs_mean", "macs", "weight_bytes_mean", "weight_size",
    "checkpoint_bytes_mean", "checkpoint_size",
    "latency_ms", "latency_ms_mean", "latency_ms_std", "latency_speedup",
    "latency_batch", "latency_threads", "precision",
    "int8_n", "int8_latency_ms", "int8_latency_ms_mean", "int8_latency_ms_std", "int8_speedup",
    "int8_clean_acc", "int8_clean_acc_mean", "int8_clean_acc_std",
    "fake_quant_clean_acc", "fake_quant_clean_acc_mean", "fake_quant_clean_acc_std",
    "int8_agreement_mean", "int8_model_bytes_mean",
    "lineage_wall_min", "lineage_wall_min_mean", "lineage_wall_min_std",
    "lineage_macs", "lineage_macs_mean",
    "peak_rss_mb", "peak_rss_mb_mean", "peak_rss_mb_std",
]
# Row order of the compute table: the other tables' order (st before rb; dense, pruning, PTQ,
# QAT; no fine-tuning, T_st, T_ad), unknown values after the known ones, alphabetically.
_TRAIN_ORDER = {"st": 0, "rb": 1}
_METHOD_ORDER = {"dense": 0, "prune": 1, "ptq": 2, "qat": 3}
_FINETUNE_ORDER = {"none": 0, "st": 1, "ad": 2}


def _model_sort_key(train: str, method: str, level: float, finetune: str) -> tuple:
    """Models by train, method, level, finetune; levels from the least to the most compressed
    (sparsity ascending, bit widths descending: INT16 ... INT1)."""
    lev = -math.inf if pd.isna(level) else (-level if method in ("ptq", "qat") else level)
    return (_TRAIN_ORDER.get(train, len(_TRAIN_ORDER)), str(train),
            _METHOD_ORDER.get(method, len(_METHOD_ORDER)), str(method), lev,
            _FINETUNE_ORDER.get(finetune, len(_FINETUNE_ORDER)), str(finetune))


def _compression_level(method: str, level: float) -> str:
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


def _joined(values: pd.Series) -> str | float:
    """The distinct known values as text (``"256"``, ``"fp32, bf16"``), NaN when none."""
    found = sorted({str(int(v)) if isinstance(v, (int, float, np.integer, np.floating)) else str(v)
                    for v in values.dropna()})
    return ", ".join(found) if found else math.nan


def compute_table(df: pd.DataFrame) -> pd.DataFrame:
    """Compute and memory cost of every model of the experiment (not in the paper): one row per
    evaluated node (train x compression x finetune: f_st, f_rb, f_st^p at every sparsity with
    None/T_st/T_ad, the PTQ and QAT nodes at every bit width, T_ad(f_st), ...), ordered by train,
    method, level, finetune (``_model_sort_key``).

    Columns (each a mean over seeds, ``*_std`` the sample std; formatted text beside the numbers):
    parameters, MACs per input, weight and checkpoint bytes; the CPU inference latency (ms) and its
    speed-up, the ratio of means of the dense model of the same base training without fine-tuning
    (f_st / f_rb) to this model; for nodes with an ``int8`` record (the PTQ INT8 node), the real
    INT8 model's latency, speed-up over that same dense model, clean accuracy (%) beside the
    fake-quant model's, agreement and serialized size; the whole lineage's wall time (minutes)
    and estimated MACs (as in ``computational_gains``); the peak resident memory (MB) over the
    lineage's stages and the evaluation (``_lineage_peak_rss``). n/a / NaN where not recorded."""
    df = df.reindex(columns=list(dict.fromkeys([*df.columns, *METRIC_COLUMNS])))  # older CSVs
    stages = _lineage_stages(df)
    model_cols = ["train", "compression", "method", "level", "finetune"]
    rows = []
    for keys, g in _groups(df):
        models = sorted(g.groupby(model_cols, dropna=False, sort=False),
                        key=lambda kv: _model_sort_key(kv[0][0], kv[0][2], kv[0][3], kv[0][4]))
        for (train, compression, method, level, finetune), sel in models:
            dense = _select(g, train, "dense", "none")
            ref_latency = _mean_std(dense["latency_ms"])[0]
            lat_mean, lat_std = _mean_std(sel["latency_ms"])
            i8_mean, i8_std = _mean_std(sel["int8_latency_ms"])
            acc_mean, acc_std = _mean_std(sel["int8_clean_acc"] * 100.0)
            fq_mean, fq_std = _mean_std(sel["int8_fake_quant_clean_acc"] * 100.0)
            total_wall, total_macs = _lineage_totals(sel, stages)
            lin_mean, lin_std = _mean_std(total_wall / 60.0)
            lin_macs = _mean_std(total_macs)[0]
            peak_mean, peak_std = _mean_std(_lineage_peak_rss(sel, stages))
            macs_mean = _mean_std(sel["macs"])[0]
            weight_mean = _mean_std(sel["weight_bytes"])[0]
            ckpt_mean = _mean_std(sel["checkpoint_bytes"])[0]
            rows.append({
                **dict(zip(GROUP_COLS, keys)),
                "model": model_label(train, method, finetune, quant_kind=True),
                "train": train, "compression": compression, "method": method, "level": level,
                "finetune": finetune, "compression_level": _compression_level(method, level),
                "n": int(sel["seed"].nunique()),
                "params_mean": _mean_std(sel["params"])[0],
                "macs_mean": macs_mean, "macs": format_macs(macs_mean),
                "weight_bytes_mean": weight_mean, "weight_size": format_bytes(weight_mean),
                "checkpoint_bytes_mean": ckpt_mean, "checkpoint_size": format_bytes(ckpt_mean),
                "latency_ms": format_minutes(lat_mean, lat_std),
                "latency_ms_mean": lat_mean, "latency_ms_std": lat_std,
                "latency_speedup": _ratio(ref_latency, lat_mean),
                "latency_batch": _joined(sel["latency_batch"]),
                "latency_threads": _joined(sel["latency_threads"]),
                "precision": _joined(sel["precision"]),
                "int8_n": int(sel.loc[sel["int8_latency_ms"].notna()
                                      | sel["int8_clean_acc"].notna(), "seed"].nunique()),
                "int8_latency_ms": format_minutes(i8_mean, i8_std),
                "int8_latency_ms_mean": i8_mean, "int8_latency_ms_std": i8_std,
                "int8_speedup": _ratio(ref_latency, i8_mean),
                "int8_clean_acc": format_cell(acc_mean, acc_std),
                "int8_clean_acc_mean": acc_mean, "int8_clean_acc_std": acc_std,
                "fake_quant_clean_acc": format_cell(fq_mean, fq_std),
                "fake_quant_clean_acc_mean": fq_mean, "fake_quant_clean_acc_std": fq_std,
                "int8_agreement_mean": _mean_std(sel["int8_agreement"] * 100.0)[0],
                "int8_model_bytes_mean": _mean_std(sel["int8_model_bytes"])[0],
                "lineage_wall_min": format_minutes(lin_mean, lin_std),
                "lineage_wall_min_mean": lin_mean, "lineage_wall_min_std": lin_std,
                "lineage_macs": format_macs(lin_macs), "lineage_macs_mean": lin_macs,
                "peak_rss_mb": format_minutes(peak_mean, peak_std),
                "peak_rss_mb_mean": peak_mean, "peak_rss_mb_std": peak_std,
            })
    return pd.DataFrame(rows, columns=_COMPUTE_COLS)


# ----------------------------------------------------------------------------- LaTeX helpers

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}
_LABEL_RE = re.compile(r"^(?:T_(?P<ft>[a-z]+)\((?P<inner>[^()\s]+)\)|(?P<plain>[^()\s]+))"
                       r"(?P<kind> \((?:PTQ|QAT)\))?$")
_BASE_RE = re.compile(r"^f_(?P<train>[a-z]+)(?:\^(?P<sup>[a-z]+))?$")


def latex_escape(text) -> str:
    """Plain text safe inside LaTeX (``fashion_mnist`` -> ``fashion\\_mnist``)."""
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(text))


def latex_model_label(label: str) -> str:
    """``T_ad(f_st^q) (PTQ)`` -> ``$\\mathcal{T}_{ad}(f_{st}^{q})$ (PTQ)``; a label that is not
    in the paper's notation is escaped as plain text."""
    m = _LABEL_RE.match(label)
    base = _BASE_RE.match((m.group("inner") or m.group("plain")) if m else "")
    if not (m and base):
        return latex_escape(label)
    math_label = "f_{" + base.group("train") + "}"
    if base.group("sup"):
        math_label += "^{" + base.group("sup") + "}"
    if m.group("ft"):
        math_label = r"\mathcal{T}_{" + m.group("ft") + "}(" + math_label + ")"
    return f"${math_label}$" + (m.group("kind") or "")


def _latex_text(cell) -> str:
    """A table cell: escaped, with ``±`` as ``$\\pm$``."""
    return latex_escape(cell).replace("±", r"$\pm$")


# ----------------------------------------------------------------------------- table layouts
# Each layout turns the CSV rows of one (experiment, dataset, arch) group into the paper's
# layout: a DataFrame of plain-text cells whose column names are the Markdown header.


def _seed_counts(row: pd.Series, keys: list[str]) -> str:
    """``"3"`` when all columns have the same number of seeds, else ``"3/0/3"``."""
    ns = [str(int(row[k])) for k in keys]
    return ns[0] if len(set(ns)) == 1 else "/".join(ns)


def _layout_table2(rows: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({
        "Dataset": [dataset_name(rows["dataset"].iloc[0])] + [""] * (len(rows) - 1),
        "Model": rows["model"], "n": rows["n"].astype(int).astype(str),
        "Test": rows["test"], "Robustness": rows["robustness"]})
    return out.reset_index(drop=True)


def _layout_table3(rows: pd.DataFrame) -> pd.DataFrame:
    first = rows["performance"] == "test"  # the model is named once, on its "test" row
    out = pd.DataFrame({"Model": rows["model"].where(first, ""), "Performance": rows["performance"]})
    for ft, title in _FT_KEYS:
        out[title] = rows[ft]
    out["n"] = [_seed_counts(r, [f"{ft}_n" for ft, _ in _FT_KEYS]) for _, r in rows.iterrows()]
    return out.reset_index(drop=True)


def _layout_table5(rows: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"Model": rows["model"], "n": rows["n"].astype(int).astype(str),
                         "Test": rows["test"], "Robustness": rows["robustness"]}
                        ).reset_index(drop=True)


_STAGE_ROLE = {"train_base": "training", "finetune": "fine-tuning"}


def _layout_gains(rows: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "Model": rows["model"],
        "Adversarial stage": rows["adversarial_stage"].map(lambda s: _STAGE_ROLE.get(s, s)),
        "n": rows["n"].astype(int).astype(str),
        "Adv. time (min)": rows["adv_wall_min"],
        "Adv. time / f_rb": rows["adv_time_ratio"].map(format_ratio),
        "Adv. MACs (est.)": rows["adv_macs"],
        "Adv. MACs / f_rb": rows["adv_macs_ratio"].map(format_ratio),
        "Lineage time (min)": rows["lineage_wall_min"],
        "Lineage time / f_rb": rows["lineage_time_ratio"].map(format_ratio),
        "Device": rows["device"],
    }).reset_index(drop=True)


def _layout_compute(rows: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "Model": rows["model"], "Compression": rows["compression_level"],
        "n": rows["n"].astype(int).astype(str),
        "Params": rows["params_mean"].map(format_count), "MACs": rows["macs"],
        "Weights": rows["weight_size"], "Checkpoint": rows["checkpoint_size"],
        "Latency (ms)": rows["latency_ms"], "Speed-up": rows["latency_speedup"].map(format_speedup),
        "INT8 latency (ms)": rows["int8_latency_ms"],
        "INT8 speed-up": rows["int8_speedup"].map(format_speedup),
        "INT8 acc. (%)": rows["int8_clean_acc"],
        "Fake-quant acc. (%)": rows["fake_quant_clean_acc"],
        "Lineage time (min)": rows["lineage_wall_min"], "Lineage MACs (est.)": rows["lineage_macs"],
        "Peak memory (MB)": rows["peak_rss_mb"],
    }).reset_index(drop=True)


# LaTeX header lines and column specification of each layout.
_T_ST, _T_AD = r"$\mathcal{T}_{st}(\cdot)$", r"$\mathcal{T}_{ad}(\cdot)$"
_TEX_HEADERS = {
    "table2": ([r"Dataset & Model & $n$ & Test & Robustness \\"], "llrcc"),
    "table3": ([r" & & \multicolumn{3}{c}{Fine-tuning} & \\", r"\cmidrule(lr){3-5}",
                rf"Model & Performance & None & {_T_ST} & {_T_AD} & $n$ \\"], "llcccc"),
    "table5": ([r"Model & $n$ & Test & Robustness \\"], "lrcc"),
    "gains": ([r" & & & \multicolumn{4}{c}{Adversarial stage} & \multicolumn{2}{c}{Whole lineage} & \\",
               r"\cmidrule(lr){4-7} \cmidrule(lr){8-9}",
               r"Model & Stage & $n$ & Time (min) & Ratio & MACs (est.) & Ratio & Time (min) & Ratio"
               r" & Device \\"], "llrccccccl"),
    "compute": ([r" & & & \multicolumn{4}{c}{Model size} & \multicolumn{2}{c}{Latency (CPU)}"
                 r" & \multicolumn{4}{c}{Real INT8} & \multicolumn{2}{c}{Whole lineage} & \\",
                 r"\cmidrule(lr){4-7} \cmidrule(lr){8-9} \cmidrule(lr){10-13} \cmidrule(lr){14-15}",
                 r"Model & Compression & $n$ & Params & MACs & Weights & Checkpoint & ms & Speed-up"
                 r" & ms & Speed-up & Acc. (\%) & Fake-quant (\%) & Time (min) & MACs (est.)"
                 r" & Peak mem. (MB) \\"], "llrrrrrccccccccc"),
}


def _group_title(keys: tuple) -> str:
    experiment, dataset, arch = keys
    return f"{experiment}: {dataset_name(dataset)}, {arch_name(arch)}"


def _blocks(table: pd.DataFrame, layout) -> list[tuple[tuple, pd.DataFrame]]:
    """[(group keys, paper-layout DataFrame)] per (experiment, dataset, arch) group."""
    if table.empty:
        return []
    return [(keys, layout(rows)) for keys, rows in table.groupby(GROUP_COLS, sort=True)]


def _markdown(caption: str, blocks: list, note: str) -> str:
    def md(block: pd.DataFrame) -> str:
        # disable_numparse: cells are final text ("1.00" must not become "1")
        return block.to_markdown(index=False, disable_numparse=True)

    if not blocks:
        body = "(no data)"
    elif len(blocks) == 1:
        body = md(blocks[0][1])
    else:
        body = "\n\n".join(f"**{_group_title(keys)}**\n\n{md(b)}" for keys, b in blocks)
    return f"{caption}\n\n{body}\n\n{note}\n"


def _latex(caption: str, label: str, blocks: list, header: list[str], colspec: str,
           note: str) -> str:
    """A booktabs table float (needs ``\\usepackage{booktabs}``). Model labels become math,
    other cells are escaped; several groups are separated by a titled ``\\midrule``."""
    ncols = len(colspec)
    lines = ["% Written by advfine.report; needs \\usepackage{booktabs}.",
             r"\begin{table}[htbp]", r"\centering", rf"\caption{{{caption}}}",
             rf"\label{{tab:{label}}}", rf"\begin{{tabular}}{{{colspec}}}", r"\toprule"]
    lines += header
    lines.append(r"\midrule")
    if not blocks:
        lines.append(rf"\multicolumn{{{ncols}}}{{c}}{{no data}} \\")
    for i, (keys, block) in enumerate(blocks):
        if len(blocks) > 1:
            if i:
                lines.append(r"\midrule")
            title = latex_escape(_group_title(keys))
            lines.append(rf"\multicolumn{{{ncols}}}{{l}}{{\emph{{{title}}}}} \\")
        for _, row in block.iterrows():
            cells = [latex_model_label(v) if col == "Model" and v else _latex_text(v)
                     for col, v in row.items()]
            lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", "",
              rf"\par\smallskip{{\footnotesize {note}}}", r"\end{table}", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- writers


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


_NOTE = ("Accuracy in %, mean ± sample std (ddof=1) over seeds; n = number of seeds "
         "(std 0.00 when n = 1); n/a = no data for that combination.")
_TEX_NOTE = (r"Accuracy in \%, mean $\pm$ sample std (ddof=1) over seeds; $n$ = number of seeds "
             r"(std 0.00 when $n = 1$); n/a = no data for that combination.")
_GAINS_NOTE = ("Wall times in minutes, mean ± sample std over seeds; MACs: mean over seeds of the "
               "estimated multiply-accumulates recorded for each stage; ratios: ratio of means to "
               "f_rb's; n/a = no data (or an eval.json written before MACs were recorded).")
_TEX_GAINS_NOTE = (r"Wall times in minutes, mean $\pm$ sample std over seeds; MACs: mean over "
                   r"seeds of the estimated multiply-accumulates recorded for each stage; "
                   r"ratio: ratio of means to $f_{rb}$'s; n/a = no data.")




def _compute_notes(df: pd.DataFrame) -> tuple[str, str]:
    """The compute table's Markdown and LaTeX notes, with the recorded batch size and threads."""
    batch = _joined(df["latency_batch"]) if "latency_batch" in df and len(df) else math.nan
    threads = _joined(df["latency_threads"]) if "latency_threads" in df and len(df) else math.nan
    batch = "256" if isinstance(batch, float) else batch
    threads = "" if isinstance(threads, float) else f" ({threads})"
    md = (f"Latency: median of timed forward passes of a batch of {batch} test images on the CPU "
          f"with the job's threads{threads}, in ms, mean ± sample std over seeds; speed-up: ratio "
          "of means, the dense model of the same base training without fine-tuning (f_st or f_rb) "
          "to this model (so f_st and f_rb are 1.00x). Fake-quantized models (^q, PTQ and QAT) run "
          "as fp32 with rounding, so they are not faster; the real INT8 model is torch.ao's (oneDNN) "
          "integer model of the PTQ INT8 node (n/a elsewhere), its clean accuracy (%) beside the "
          "fake-quant model's. Params and MACs per input: mean over seeds; weights: bytes of the "
          "stored weights, checkpoint: file size (kB = 1000 bytes, MB = 10^6 bytes). Whole "
          "lineage: wall time in minutes (mean ± std) and estimated MACs (mean) of every stage "
          "that produced the model (training + compression + fine-tuning). Peak memory: peak "
          "resident set size of the job process, the maximum over the lineage's stages and the "
          "evaluation, in MB (mean ± std); n/a = no data (or an eval.json written before it was "
          "recorded).")
    tex = (rf"Latency: median of timed forward passes of a batch of {batch} test images on the "
           rf"CPU with the job's threads{latex_escape(threads)}, in ms, mean $\pm$ sample std over "
           r"seeds; speed-up: ratio of means, the dense model of the same base training without "
           r"fine-tuning ($f_{st}$ or $f_{rb}$) to this model. Fake-quantized models ($f^q$, PTQ "
           r"and QAT) run as fp32 with rounding, so they are not faster; the real INT8 model is "
           r"torch.ao's (oneDNN) integer model of the PTQ INT8 node (n/a elsewhere), its clean "
           r"accuracy (\%) beside the fake-quant model's. Sizes: kB = 1000 bytes, MB = $10^6$ "
           r"bytes. Whole lineage: wall time in minutes (mean $\pm$ std) and estimated MACs "
           r"(mean) of every stage that produced the model. Peak memory: peak resident set size "
           r"of the job process, the maximum over the lineage's stages and the evaluation, in MB "
           r"(mean $\pm$ std); n/a = no data.")
    return md, tex


def _single_dataset(df: pd.DataFrame, dataset: str | None) -> str:
    found = sorted(df["dataset"].dropna().unique()) if len(df) else []
    if dataset is None:
        if len(found) != 1:
            raise ValueError("write_tables needs the rows of exactly one dataset (one experiment), "
                             f"found {found or 'none'}; pass dataset= for an empty DataFrame")
        return found[0]
    if found and found != [dataset]:
        raise ValueError(f"write_tables(dataset={dataset!r}) got rows of datasets {found}")
    return dataset


def write_tables(df: pd.DataFrame, out_dir: str | os.PathLike,
                 prune_level: float | Mapping[str, float],
                 ptq_bits: int | Mapping[str, int], dataset: str | None = None) -> list[Path]:
    """Write the tables of one experiment into ``out_dir`` (atomically): for each stem of
    ``table_names(dataset)`` a ``.csv`` (all numbers, group columns), ``.md`` and ``.tex``
    (booktabs) in the paper's layout. ``dataset`` defaults to the single dataset in ``df``
    (ValueError if there are several, or none and no ``dataset``). ``prune_level``/``ptq_bits``
    are one value or a {dataset: value} mapping. Returns the written paths."""
    dataset = _single_dataset(df, dataset)
    stems = table_names(dataset)
    p_lev, q_bits = _level_for(prune_level, dataset), _level_for(ptq_bits, dataset)
    p_txt = NA if p_lev is None else f"{p_lev:g}"
    p_pct = NA if p_lev is None else f"{100 * p_lev:g}\\%"
    q_txt = NA if q_bits is None else f"INT{int(q_bits)}"
    archs = ", ".join(arch_name(a) for a in sorted(df["arch"].dropna().unique())) if len(df) else ""
    on = f"{dataset_name(dataset)} ({archs})" if archs else dataset_name(dataset)
    on_tex = latex_escape(on)
    num3, num5 = (4, 6) if dataset == "cifar10" else (3, 5)
    specs = [  # (stem, CSV table, layout, LaTeX header key, md caption, tex caption, notes)
        (stems[0], table2(df), _layout_table2, "table2",
         f"Table 2: Baseline performance of the dense standard (f_st) and robust (f_rb) models on "
         f"{on}, test accuracy and robustness (accuracy under PGD); T_ad(f_st) = the standard model "
         "with adversarial fine-tuning.",
         rf"Baseline performance of the dense standard ($f_{{st}}$) and robust ($f_{{rb}}$) models on "
         rf"{on_tex}, test accuracy and robustness (accuracy under PGD); $\mathcal{{T}}_{{ad}}(f_{{st}})$ "
         "is the standard model with adversarial fine-tuning.", _NOTE, _TEX_NOTE),
        (stems[1], table3(df, prune_level, ptq_bits), _layout_table3, "table3",
         f"Table {num3}: Performance of compressed standard and robust models on {on}: l1-norm "
         f"filter pruning with sparsity {p_txt} (^p) and {q_txt} post-training quantization (^q), "
         "without fine-tuning (None), with standard (T_st) and adversarial (T_ad) fine-tuning.",
         rf"Performance of compressed standard and robust models on {on_tex}: $\ell_1$-norm filter "
         rf"pruning with {p_pct} sparsity ratio ($f^p$) and {q_txt} post-training quantization "
         rf"($f^q$), without fine-tuning (None), with standard fine-tuning {_T_ST} and adversarial "
         rf"fine-tuning {_T_AD}.", _NOTE, _TEX_NOTE),
        (stems[2], table5(df, prune_level, ptq_bits), _layout_table5, "table5",
         f"Table {num5}: Performance on {on} of the dense models f_st, f_rb and of compressed models "
         f"after adversarial fine-tuning T_ad(·): pruning with sparsity {p_txt} (^p), {q_txt} "
         "post-training quantization (PTQ) and quantization-aware training (QAT) (^q).",
         rf"Performance on {on_tex} of the dense models $f_{{st}}$, $f_{{rb}}$ and of compressed "
         rf"models after adversarial fine-tuning {_T_AD}: pruning with {p_pct} sparsity ratio "
         rf"($f^p$), {q_txt} post-training quantization (PTQ) and quantization-aware training "
         rf"(QAT) ($f^q$).", _NOTE, _TEX_NOTE),
        (stems[3], computational_gains(df, prune_level, ptq_bits), _layout_gains, "gains",
         f"Computational gains on {on}: the adversarial stage of full adversarial training (f_rb) "
         f"vs adversarial fine-tuning of the dense (T_ad(f_st)), pruned (sparsity {p_txt}) and "
         f"quantized ({q_txt} PTQ) standard models, with its wall time and estimated MACs, and the "
         "wall time of each model's whole lineage (standard training + compression + "
         "fine-tuning); ratios to f_rb.",
         rf"Computational gains on {on_tex}: the adversarial stage of full adversarial training "
         rf"($f_{{rb}}$) vs adversarial fine-tuning of the dense ($\mathcal{{T}}_{{ad}}(f_{{st}})$), "
         rf"pruned ({p_pct} sparsity) and quantized ({q_txt} PTQ) standard models, with its wall "
         r"time and estimated multiply-accumulates (MACs), and the wall time of each model's "
         r"whole lineage (standard training + compression + fine-tuning).",
         _GAINS_NOTE, _TEX_GAINS_NOTE),
        (stems[4], compute_table(df), _layout_compute, "compute",
         f"Compute and memory on {on}: every model of the experiment with its size (parameters, "
         "MACs per input, weight and checkpoint size), its CPU inference latency and speed-up over "
         "the dense model of the same base training, the real INT8 model of the PTQ INT8 node "
         "(latency, speed-up, clean accuracy beside the fake-quant model's), the wall time and "
         "estimated MACs of its whole training lineage, and the peak memory of its jobs.",
         rf"Compute and memory on {on_tex}: every model of the experiment with its size "
         r"(parameters, multiply-accumulates (MACs) per input, weight and checkpoint size), its "
         r"CPU inference latency and speed-up over the dense model of the same base training, "
         r"the real INT8 model of the PTQ INT8 node (latency, speed-up, clean accuracy beside the "
         r"fake-quant model's), the wall time and estimated MACs of its whole training lineage, "
         r"and the peak memory of its jobs.", *_compute_notes(df)),
    ]
    out = Path(out_dir)
    written = []
    for stem, table, layout, tex_key, md_caption, tex_caption, note, tex_note in specs:
        blocks = _blocks(table, layout)
        header, colspec = _TEX_HEADERS[tex_key]
        files = {
            "csv": table.to_csv(index=False, lineterminator="\n"),
            "md": _markdown(md_caption, blocks, note),
            "tex": _latex(tex_caption, stem, blocks, header, colspec, tex_note),
        }
        for ext in TABLE_FORMATS:
            path = out / f"{stem}.{ext}"
            _atomic_write_text(path, files[ext])
            written.append(path)
    return written


def write_metrics_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """The flat per-model DataFrame from ``collect_metrics`` as CSV (atomically)."""
    path = Path(path)
    _atomic_write_text(path, df.to_csv(index=False, lineterminator="\n"))
    return path


# ----------------------------------------------------------------------------- figures
# Each plot_* function writes a PNG to ``path_png`` and, when ``path_pdf`` is given, the same
# figure as PDF; it returns the written paths. ``plot_figures`` writes both for named figures.

_LINES = [  # (train, metric key, label, color, marker)
    ("st", "test", "standard f_st: test", "tab:blue", "o"),
    ("st", "robust", "standard f_st: robustness", "tab:orange", "o"),
    ("rb", "test", "robust f_rb: test", "tab:green", "s"),
    ("rb", "robust", "robust f_rb: robustness", "tab:red", "s"),
]
_QUANT_XLABEL = {"ptq": "post-training quantization bit width",
                 "qat": "quantization-aware training bit width"}


def new_figure(width: float, height: float):
    """A matplotlib Figure on an Agg canvas: no pyplot, no screen, no global backend switch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path_png: str | os.PathLike,
                path_pdf: str | os.PathLike | None = None) -> list[Path]:
    """Write ``fig`` as PNG (and PDF) atomically, without timestamps; returns the paths."""
    written = []
    for path, fmt, meta in ((path_png, "png", {"Software": None}),
                            (path_pdf, "pdf", {"Creator": None, "Producer": None,
                                               "CreationDate": None})):
        if path is None:
            continue
        path = Path(path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=120, metadata=meta)
        written.append(path)
    return written


def _curve(g: pd.DataFrame, train: str, method: str, finetune: str) -> pd.DataFrame:
    """Per-level seed statistics of one (train, method, finetune) curve, sorted by level."""
    sub = _select(g, train, method, finetune)
    recs = [{"level": lev, **summarize(rows)} for lev, rows in sub.groupby("level", sort=True)]
    return pd.DataFrame(recs, columns=["level", "n", "test_mean", "test_std",
                                       "robust_mean", "robust_std"])


def _no_data(ax, title: str) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", fontsize=14, color="gray",
            transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])


def _panel(ax, g: pd.DataFrame, method: str, finetune: str, trains: tuple[str, ...],
           title: str) -> list[int]:
    """Draw one panel (accuracy vs compression level); returns the seed counts of the points."""
    curves = {train: _curve(g, train, method, finetune) for train in trains}
    if all(c.empty for c in curves.values()):
        _no_data(ax, title)
        return []
    if method in _QUANT_XLABEL:  # categorical bit widths (INT16 ... INT1), most bits on the left
        bits = sorted({int(b) for c in curves.values() for b in c["level"]}, reverse=True)
        pos = {b: i for i, b in enumerate(bits)}
        xof = lambda levels: [pos[int(b)] for b in levels]  # noqa: E731
        ax.set_xticks(range(len(bits)), [f"INT{b}" for b in bits])
        ax.set_xlim(-0.5, len(bits) - 0.5)
        ax.set_xlabel(_QUANT_XLABEL[method])
    else:
        xof = list
        ax.set_xlabel("pruning sparsity ratio")
    ns: list[int] = []
    for train, key, label, color, marker in _LINES:
        if train not in trains:
            continue
        c = curves[train]
        if not c.empty:
            ax.errorbar(xof(c["level"]), c[f"{key}_mean"], yerr=c[f"{key}_std"], label=label,
                        color=color, marker=marker, capsize=3, linewidth=1.5)
            ns += list(c["n"])
        dense = _select(g, train, "dense", "none")
        if len(dense):
            ax.axhline(summarize(dense)[f"{key}_mean"], color=color, linestyle=":",
                       linewidth=1, alpha=0.8)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return ns


def _plot_levels(df: pd.DataFrame, path_png, path_pdf, panels: list[tuple[str, str, str]],
                 trains: tuple[str, ...], heading: str) -> list[Path]:
    """One row of ``panels`` (method, finetune, title) per (experiment, dataset, arch)."""
    from matplotlib.lines import Line2D

    groups = _groups(df) or [(("", "", ""), pd.DataFrame(columns=METRIC_COLUMNS))]
    fig = new_figure(max(5.5 * len(panels), 7.5), 4.2 * len(groups) + 1.5)
    axes = fig.subplots(len(groups), len(panels), squeeze=False)
    ns: list[int] = []
    for (keys, g), row_axes in zip(groups, axes):
        exp, dataset, arch = keys
        where = f"{exp}: {dataset_name(dataset)}, {arch_name(arch)}\n" if exp else ""
        for ax, (method, finetune, title) in zip(row_axes, panels):
            ns += _panel(ax, g, method, finetune, trains, where + title)
    seeds = (f"n = {min(ns)} seeds" if ns and min(ns) == max(ns)
             else f"n = {min(ns)}-{max(ns)} seeds" if ns else "no data")
    fig.suptitle(f"{heading}\nmean ± sample std over seeds ({seeds})\n"
                 "dotted lines: dense model without fine-tuning", fontsize=11)
    handles = [Line2D([], [], color=c, marker=m, label=lab)
               for train, _, lab, c, m in _LINES if train in trains]
    handles.append(Line2D([], [], color="gray", linestyle=":", label="dense reference"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save_figure(fig, path_png, path_pdf)


def plot_figure1(df: pd.DataFrame, path_png: str | os.PathLike,
                 path_pdf: str | os.PathLike | None = None) -> list[Path]:
    """Figure 1: test accuracy and robustness of standard and robust models vs compression level
    after adversarial fine-tuning (finetune == "ad"); left pruning sparsity, right PTQ bit width;
    error bars = std over seeds; one panel row per (experiment, dataset, arch)."""
    panels = [("prune", "ad", "l1-norm pruning, T_ad(f^p)"),
              ("ptq", "ad", "post-training quantization, T_ad(f^q)")]
    return _plot_levels(df, path_png, path_pdf, panels, ("st", "rb"),
                        "Figure 1: compressed models after adversarial fine-tuning T_ad(·)")


def plot_figure3(df: pd.DataFrame, path_png: str | os.PathLike,
                 path_pdf: str | os.PathLike | None = None) -> list[Path]:
    """Figure 3: the same as Figure 1 without fine-tuning (finetune == "none")."""
    panels = [("prune", "none", "l1-norm pruning (f^p)"),
              ("ptq", "none", "post-training quantization (f^q)")]
    return _plot_levels(df, path_png, path_pdf, panels, ("st", "rb"),
                        "Figure 3: compressed models without fine-tuning")


def plot_figure4(df: pd.DataFrame, path_png: str | os.PathLike,
                 path_pdf: str | os.PathLike | None = None) -> list[Path]:
    """Figure 4: robust models quantized by quantization-aware training (method "qat", train
    "rb", finetune "none"): test accuracy and robustness vs bit width, one point per bit width."""
    panels = [("qat", "none", "quantization-aware training (f_rb^q)")]
    return _plot_levels(df, path_png, path_pdf, panels, ("rb",),
                        "Figure 4: robust models with quantization-aware training, "
                        "no fine-tuning")


# Figure stems (as the workflow names the files) -> plot function.
FIGURES = {
    "figure1_adversarial_finetuning": plot_figure1,
    "figure3_no_finetuning": plot_figure3,
    "figure4_qat": plot_figure4,
}


def plot_figures(df: pd.DataFrame, out_dir: str | os.PathLike,
                 names: Iterable[str] | None = None) -> list[Path]:
    """Write ``<out_dir>/<name>.png`` and ``.pdf`` for each figure stem in ``names`` (default:
    all of ``FIGURES``); returns the written paths. Unknown names raise ValueError."""
    names = list(FIGURES) if names is None else list(names)
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise ValueError(f"unknown figure(s) {unknown}; known: {sorted(FIGURES)}")
    out = Path(out_dir)
    written = []
    for name in names:
        written += FIGURES[name](df, out / f"{name}.png", out / f"{name}.pdf")
    return written
