"""Turn per-model ``eval.json`` files into the paper's tables and figures.

Pipeline (all pure functions except the ``write_*``/``plot_*`` writers):

    df = collect_metrics(paths)                # one row per eval.json, flat columns
    write_tables(df, out_dir, 0.8, 8)          # Tables 2, 3, 5 as CSV + Markdown
    plot_figure1(df, "figure1.png")            # accuracy vs compression level, finetune == "ad"
    plot_figure3(df, "figure3.png")            # same, finetune == "none"

Conventions
-----------
* Accuracies are stored as fractions in eval.json and reported in percent.
* A cell is the mean and the sample standard deviation (ddof=1) over seeds; with a single seed
  the std is shown as 0.00.  Every table carries the number of seeds (``n`` columns).
* A requested combination with no data is shown as ``n/a`` (never dropped).
* Tables are computed separately for each (experiment, dataset, arch) group; those three
  columns lead every table.
* Model labels follow the paper in plain text: ``f_st``, ``f_rb^p``, ``T_ad(f_st^q) (PTQ)``...
  (``^p`` = pruned, ``^q`` = quantized, ``T_st``/``T_ad`` = standard/adversarial fine-tuning).
* Unknown ``method``/``train``/``finetune`` values are carried in the DataFrame but are left
  out of tables and figures that do not use them.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from .artifacts import atomic_path

# ----------------------------------------------------------------------------- constants

GROUP_COLS = ["experiment", "dataset", "arch"]
STANDARD_STAGES = ["train_base", "compress", "finetune"]
NA = "n/a"

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
METRIC_COLUMNS = (
    _FLAT_COLS
    + [f"{s}_wall_time_s" for s in STANDARD_STAGES]
    + ["git_commit", "config_hash", "attack_eps", "attack_step_size", "attack_steps", "path"]
)
_SORT_COLS = ["experiment", "dataset", "arch", "train", "method", "level", "finetune", "seed",
              "compression"]
_KEY_COLS = ["experiment", "dataset", "arch", "train", "compression", "method", "level",
             "finetune", "seed"]


class MetricsFileError(ValueError):
    """An eval.json that cannot be read or lacks/mistypes a required key."""


# ----------------------------------------------------------------------------- collecting


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
        # bool is an int subclass; never accept it for a numeric field.
        if isinstance(val, bool) or not isinstance(val, types):
            raise MetricsFileError(
                f"{path}: key '{key}' has type {type(val).__name__}, expected "
                + " or ".join("null" if t is type(None) else t.__name__ for t in types))
    for key in ("clean_acc", "robust_acc"):
        if not 0.0 <= float(rec[key]) <= 1.0:
            raise MetricsFileError(f"{path}: key '{key}' = {rec[key]} is not a fraction in [0, 1]")

    row = {k: rec[k] for k in _FLAT_COLS}
    row["level"] = math.nan if rec["level"] is None else float(rec["level"])
    for stage in STANDARD_STAGES:
        row[f"{stage}_wall_time_s"] = math.nan
    seen: set[str] = set()
    for i, st in enumerate(rec["stages"]):
        if not (isinstance(st, dict) and isinstance(st.get("stage"), str)
                and isinstance(st.get("wall_time_s"), _NUM)
                and not isinstance(st.get("wall_time_s"), bool)):
            raise MetricsFileError(
                f"{path}: key 'stages'[{i}] must be {{'stage': str, 'wall_time_s': number}}")
        if st["stage"] in seen:
            raise MetricsFileError(f"{path}: key 'stages' lists stage '{st['stage']}' twice")
        seen.add(st["stage"])
        row[f"{st['stage']}_wall_time_s"] = float(st["wall_time_s"])
    prov, attack = rec["provenance"], rec["attack"]
    row["git_commit"] = prov.get("git_commit")
    row["config_hash"] = prov.get("config_hash")
    row["attack_eps"] = attack.get("eps")
    row["attack_step_size"] = attack.get("step_size")
    row["attack_steps"] = attack.get("steps")
    row["path"] = str(path)
    return row


def collect_metrics(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Read eval.json files into one DataFrame, one row per file.

    Columns: ``METRIC_COLUMNS`` (+ ``<stage>_wall_time_s`` for any non-standard stage).
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


def format_cell(mean: float, std: float) -> str:
    """``"82.00 ± 2.83"``, or ``"n/a"`` when there is no data."""
    if mean is None or std is None or math.isnan(mean) or math.isnan(std):
        return NA
    return f"{mean:.2f} ± {std:.2f}"


def _level_for(levels: float | Mapping[str, float], dataset: str) -> float | None:
    """A single level, or a {dataset: level} mapping (the paper uses 0.8 on FMNIST, 0.5 on
    CIFAR10). A dataset missing from the mapping gets None (its cells become n/a)."""
    if isinstance(levels, Mapping):
        return levels.get(dataset)
    return levels


def _levels_text(levels: float | Mapping[str, float], fmt) -> str:
    if isinstance(levels, Mapping):
        return ", ".join(f"{fmt(v)} on {k}" for k, v in sorted(levels.items()))
    return fmt(levels)


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
    """Baselines: f_st, f_rb (dense, no fine-tuning) and, when present, T_ad(f_st)."""
    rows = []
    for keys, g in _groups(df):
        rows.append(_row(keys, "f_st", summarize(_select(g, "st", "dense", "none"))))
        rows.append(_row(keys, "f_rb", summarize(_select(g, "rb", "dense", "none"))))
        tad = _select(g, "st", "dense", "ad")
        if len(tad):
            rows.append(_row(keys, model_label("st", "dense", "ad"), summarize(tad)))
    return pd.DataFrame(rows, columns=_T2_COLS)


def table3(df: pd.DataFrame, prune_level: float | Mapping[str, float],
           ptq_bits: int | Mapping[str, int]) -> pd.DataFrame:
    """Compressed models f_st^p, f_st^q, f_rb^p, f_rb^q (q = PTQ) x fine-tuning None/T_st/T_ad,
    each model with a "test" and a "robustness" row."""
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


def table5(df: pd.DataFrame, prune_level: float | Mapping[str, float],
           ptq_bits: int | Mapping[str, int]) -> pd.DataFrame:
    """Dense base models vs adversarially fine-tuned compressed ones:
    f_st, T_ad(f_st^p), T_ad(f_st^q) (PTQ), f_rb, T_ad(f_rb^p), T_ad(f_rb^q) (PTQ), plus
    T_ad(f_<train>^q) (QAT) rows (at the PTQ bit width) for each train mode having any QAT rows."""
    rows = []
    for keys, g in _groups(df):
        dataset = keys[1]
        p_lev, q_bits = _level_for(prune_level, dataset), _level_for(ptq_bits, dataset)
        for train in ("st", "rb"):
            rows.append(_row(keys, base_label(train), summarize(_select(g, train, "dense", "none"))))
            specs = [("prune", p_lev), ("ptq", q_bits)]
            if ((g["train"] == train) & (g["method"] == "qat")).any():
                specs.append(("qat", q_bits))
            for method, lev in specs:
                s = summarize(_pick(g, train, method, "ad", lev, True))
                rows.append(_row(keys, model_label(train, method, "ad", quant_kind=True), s))
    return pd.DataFrame(rows, columns=_T2_COLS)


# ----------------------------------------------------------------------------- writers


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _markdown(caption: str, table: pd.DataFrame, note: str) -> str:
    body = table.to_markdown(index=False) if len(table) else "(no data)"
    return f"{caption}\n\n{body}\n\n{note}\n"


def _md_table2(t: pd.DataFrame) -> pd.DataFrame:
    return t.rename(columns={"experiment": "Experiment", "dataset": "Dataset", "arch": "Arch",
                             "model": "Model", "test": "Test", "robustness": "Robustness"})[
        ["Experiment", "Dataset", "Arch", "Model", "n", "Test", "Robustness"]]


def _md_table3(t: pd.DataFrame) -> pd.DataFrame:
    out = t.rename(columns={"experiment": "Experiment", "dataset": "Dataset", "arch": "Arch",
                            "model": "Model", "performance": "Performance",
                            **{ft: title for ft, title in _FT_KEYS}})
    ns = t[[f"{ft}_n" for ft, _ in _FT_KEYS]].astype(int).astype(str)
    out["n (None/T_st/T_ad)"] = [
        r.iloc[0] if r.nunique() == 1 else "/".join(r) for _, r in ns.iterrows()]
    return out[["Experiment", "Dataset", "Arch", "Model", "Performance"]
               + [title for _, title in _FT_KEYS] + ["n (None/T_st/T_ad)"]]


_NOTE = ("Accuracy in %, mean ± sample std (ddof=1) over seeds; n = number of seeds "
         "(std 0.00 when n = 1); n/a = no data for that combination.")


def write_tables(df: pd.DataFrame, out_dir: str | os.PathLike,
                 prune_level: float | Mapping[str, float],
                 ptq_bits: int | Mapping[str, int]) -> list[Path]:
    """Write table2_baselines, table3_compressed, table5_adversarial_finetuning as .csv and .md
    into ``out_dir`` (atomically). ``prune_level``/``ptq_bits`` are one value or a
    {dataset: value} mapping. Returns the written paths (csv, md per table)."""
    out = Path(out_dir)
    p_txt = _levels_text(prune_level, lambda v: f"{v:g}")
    q_txt = _levels_text(ptq_bits, lambda v: f"INT{int(v)}")
    t2, t3, t5 = table2(df), table3(df, prune_level, ptq_bits), table5(df, prune_level, ptq_bits)
    specs = [
        ("table2_baselines", t2, _md_table2(t2),
         "Table 2: Baseline performance of dense standard (f_st) and robust (f_rb) models; "
         "T_ad(f_st) = standard model with adversarial fine-tuning (shown when present)."),
        ("table3_compressed", t3, _md_table3(t3),
         f"Table 3: Compressed standard and robust models (^p = l1 pruning at sparsity {p_txt}; "
         f"^q = post-training quantization {q_txt}) without fine-tuning (None), with standard "
         "(T_st) and adversarial (T_ad) fine-tuning."),
        ("table5_adversarial_finetuning", t5, _md_table2(t5),
         f"Table 5: Dense models vs adversarially fine-tuned compressed models T_ad(·) (pruning "
         f"sparsity {p_txt}; quantization {q_txt}, PTQ and, when present, QAT)."),
    ]
    written = []
    for stem, table, md_table, caption in specs:
        csv_path, md_path = out / f"{stem}.csv", out / f"{stem}.md"
        _atomic_write_text(csv_path, table.to_csv(index=False, lineterminator="\n"))
        _atomic_write_text(md_path, _markdown(caption, md_table, _NOTE))
        written += [csv_path, md_path]
    return written


def write_metrics_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """The flat per-model DataFrame from ``collect_metrics`` as CSV (atomically)."""
    path = Path(path)
    _atomic_write_text(path, df.to_csv(index=False, lineterminator="\n"))
    return path


# ----------------------------------------------------------------------------- figures

_LINES = [  # (train, metric key, label, color, marker)
    ("st", "test", "standard f_st: test", "tab:blue", "o"),
    ("st", "robust", "standard f_st: robustness", "tab:orange", "o"),
    ("rb", "test", "robust f_rb: test", "tab:green", "s"),
    ("rb", "robust", "robust f_rb: robustness", "tab:red", "s"),
]


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


def _panel(ax, g: pd.DataFrame, method: str, finetune: str, title: str) -> list[int]:
    """Draw one panel; returns the seed counts of the plotted points."""
    curves = {train: _curve(g, train, method, finetune) for train in ("st", "rb")}
    if all(c.empty for c in curves.values()):
        _no_data(ax, title)
        return []
    if method == "ptq":  # categorical bit widths, most bits (least compressed) on the left
        bits = sorted({int(b) for c in curves.values() for b in c["level"]}, reverse=True)
        pos = {b: i for i, b in enumerate(bits)}
        xof = lambda levels: [pos[int(b)] for b in levels]  # noqa: E731
        ax.set_xticks(range(len(bits)), [f"INT{b}" for b in bits])
        ax.set_xlim(-0.5, len(bits) - 0.5)
        ax.set_xlabel("post-training quantization bit width")
    else:
        xof = list
        ax.set_xlabel("pruning sparsity ratio")
    ns: list[int] = []
    for train, key, label, color, marker in _LINES:
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


def _plot_levels(df: pd.DataFrame, path: str | os.PathLike, finetune: str, heading: str) -> Path:
    # Figure + Agg canvas directly: no pyplot, no screen, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    groups = _groups(df) or [(("", "", ""), pd.DataFrame(columns=METRIC_COLUMNS))]
    fig = Figure(figsize=(11, 4.2 * len(groups) + 1.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(groups), 2, squeeze=False)
    ns: list[int] = []
    for (keys, g), (ax_p, ax_q) in zip(groups, axes):
        exp, dataset, arch = keys
        where = f"{exp}: {dataset}, {arch}\n" if exp else ""
        ns += _panel(ax_p, g, "prune", finetune, f"{where}l1-norm pruning (f^p)")
        ns += _panel(ax_q, g, "ptq", finetune, f"{where}post-training quantization (f^q)")
    seeds = (f"n = {min(ns)} seeds" if ns and min(ns) == max(ns)
             else f"n = {min(ns)}-{max(ns)} seeds" if ns else "no data")
    fig.suptitle(f"{heading}\nmean ± sample std over seeds ({seeds}); "
                 "dotted lines: dense model without fine-tuning", fontsize=11)
    handles = [Line2D([], [], color=c, marker=m, label=lab) for _, _, lab, c, m in _LINES]
    handles.append(Line2D([], [], color="gray", linestyle=":", label="dense reference"))
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, metadata={"Software": None})
    return path


def plot_figure1(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Figure 1: test accuracy and robustness vs compression level after adversarial
    fine-tuning (finetune == "ad"); left pruning, right PTQ; one panel row per
    (experiment, dataset, arch)."""
    return _plot_levels(df, path, "ad", "Figure 1: compressed models after adversarial "
                        "fine-tuning T_ad(·)")


def plot_figure3(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Figure 3: the same as Figure 1 without fine-tuning (finetune == "none")."""
    return _plot_levels(df, path, "none", "Figure 3: compressed models without fine-tuning")
