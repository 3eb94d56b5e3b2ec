"""The paper's Figures 1, 3 and 4 (and our Figure 5, robustness curves) from the per-model DataFrame (``collect_metrics`` or
all_metrics.csv), and the figure helpers the other figures share (``new_figure``, ``save_figure``;
Figure 2, the t-SNE of features, is drawn by ``advfine.features``).

Figures (PNG, and PDF when a PDF path is given): Figure 1 (accuracy vs pruning sparsity and vs
bit width after adversarial fine-tuning), Figure 3 (the same without fine-tuning), Figure 4
(QAT robust models f_rb^q vs bit width, no fine-tuning). Points are the mean over seeds, error
bars the sample std; dotted lines the dense model without fine-tuning; one panel row per
(experiment, dataset, arch). A model with a diverged or collapsed seed (``stats``) has no point: the
figure writes "diverged" or "collapsed" where it would be (Figure 5: in the legend, no curve). Each
``plot_*`` function writes a PNG to ``path_png`` and, when ``path_pdf`` is given, the same figure as PDF,
and returns the written paths; ``plot_figures`` writes both for figures named by their stems
(``FIGURES``).

This module needs no other part of ``advfine.report`` but ``labels`` and ``stats``.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..files import atomic_path
from ..vocab import DENSE, FIGURE1, FIGURE3, FIGURE4, FIGURE5, FIGURE_FORMATS, PRUNE, PTQ, QAT, model_label
from .labels import arch_name, dataset_name
from .stats import GROUP_COLS, collapsed_mask, groups, select, summarize

_LINES = [  # (train, metric key, label, color, marker)
    ("st", "test", "standard f_st: test", "tab:blue", "o"),
    ("st", "robust", "standard f_st: robustness", "tab:orange", "o"),
    ("rb", "test", "robust f_rb: test", "tab:green", "s"),
    ("rb", "robust", "robust f_rb: robustness", "tab:red", "s"),
]
_QUANT_XLABEL = {PTQ: "post-training quantization bit width",
                 QAT: "quantization-aware training bit width"}
# The columns a figure reads (the empty stand-in when there are no rows has them).
_USED_COLUMNS = [*GROUP_COLS, "seed", "train", "method", "level", "finetune", "clean_acc",
                 "robust_acc"]


def new_figure(width: float, height: float):
    """A matplotlib Figure on an Agg canvas: no pyplot, no screen, no global backend switch."""
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
    sub = select(g, train, method, finetune)
    recs = [{"level": lev, **summarize(rows)} for lev, rows in sub.groupby("level", sort=True)]
    return pd.DataFrame(recs, columns=["level", "n", "test_mean", "test_std",
                                       "robust_mean", "robust_std", "diverged", "collapsed"])


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
            for x, diverged, collapsed in zip(xof(c["level"]), c["diverged"], c["collapsed"]):
                if diverged or collapsed:  # no number for such a model: say so where its point would be
                    ax.annotate("diverged" if diverged else "collapsed", (x, 5), color=color, rotation=90,
                                fontsize=8, ha="center")
        dense = select(g, train, DENSE, "none")
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
    rows = groups(df) or [(("", "", ""), pd.DataFrame(columns=_USED_COLUMNS))]
    fig = new_figure(max(5.5 * len(panels), 7.5), 4.2 * len(rows) + 1.5)
    axes = fig.subplots(len(rows), len(panels), squeeze=False)
    ns: list[int] = []
    for (keys, g), row_axes in zip(rows, axes):
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
    panels = [(PRUNE, "ad", "l1-norm pruning, T_ad(f^p)"),
              (PTQ, "ad", "post-training quantization, T_ad(f^q)")]
    return _plot_levels(df, path_png, path_pdf, panels, ("st", "rb"),
                        "Figure 1: compressed models after adversarial fine-tuning T_ad(·)")


def plot_figure3(df: pd.DataFrame, path_png: str | os.PathLike,
                 path_pdf: str | os.PathLike | None = None) -> list[Path]:
    """Figure 3: the same as Figure 1 without fine-tuning (finetune == "none")."""
    panels = [(PRUNE, "none", "l1-norm pruning (f^p)"),
              (PTQ, "none", "post-training quantization (f^q)")]
    return _plot_levels(df, path_png, path_pdf, panels, ("st", "rb"),
                        "Figure 3: compressed models without fine-tuning")


def plot_figure4(df: pd.DataFrame, path_png: str | os.PathLike,
                 path_pdf: str | os.PathLike | None = None) -> list[Path]:
    """Figure 4: robust models quantized by quantization-aware training (method "qat", train
    "rb", finetune "none"): test accuracy and robustness vs bit width, one point per bit width."""
    panels = [(QAT, "none", "quantization-aware training (f_rb^q)")]
    return _plot_levels(df, path_png, path_pdf, panels, ("rb",),
                        "Figure 4: robust models with quantization-aware training, "
                        "no fine-tuning")


def plot_figure5(df: pd.DataFrame, path_png: str | os.PathLike,
                 path_pdf: str | os.PathLike | None = None) -> list[Path]:
    """Figure 5 (not in the paper): robust accuracy against the attack radius (multiples of the
    evaluation's eps, APGD-CE) for the models whose evaluation measured a curve (the models
    of Table 5); mean ± sample std over seeds, one panel per (experiment, dataset, arch)."""
    columns = sorted((c for c in df.columns if c.startswith("robust_acc_eps_x")),
                     key=lambda c: float(c[len("robust_acc_eps_x"):]))
    rows = groups(df) or [(("", "", ""), pd.DataFrame(columns=_USED_COLUMNS))]
    fig = new_figure(7.5, 4.6 * len(rows) + 1.0)
    axes = fig.subplots(len(rows), 1, squeeze=False)
    for (keys, g), (ax,) in zip(rows, axes):
        exp, dataset, arch = keys
        title = f"{exp}: {dataset_name(dataset)}, {arch_name(arch)}" if exp else ""
        measured = g[g[columns].notna().any(axis=1)] if columns else g.iloc[0:0]
        if measured.empty:
            _no_data(ax, title)
            continue
        eps = measured["attack_eps_pixel"].astype(float).dropna()
        unit = float(eps.iloc[0]) if len(eps) else 1.0
        fractions = [float(c[len("robust_acc_eps_x"):]) for c in columns]
        for (train, method, level, finetune), sel in measured.groupby(
                ["train", "method", "level", "finetune"], dropna=False, sort=False):
            label = model_label(train, method, finetune, quant_kind=True)
            collapsed = collapsed_mask(sel)
            if collapsed.any():  # no curve for such a model: its legend entry says so
                ax.plot([], [], linestyle="none", marker="x", color="gray",
                        label=f"{label}: collapsed ({int(collapsed.sum())}/{len(sel)})")
                continue
            values = sel[columns].astype(float) * 100.0
            ax.errorbar([f * unit for f in fractions], values.mean(), yerr=values.std(ddof=1).fillna(0.0),
                        marker="o", capsize=3, linewidth=1.3, label=f"{label} (n={len(sel)})")
        ax.axvline(unit, color="gray", linestyle=":", linewidth=1)
        ax.set_xlabel("attack radius eps (pixel units); dotted: the evaluation's eps")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle("Figure 5: robust accuracy against eps (APGD-CE), models of Table 5\n"
                 "mean ± sample std over seeds", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path_png, path_pdf)


# Figure stems (as the workflow names the files) -> plot function.
FIGURES = {FIGURE1: plot_figure1, FIGURE3: plot_figure3, FIGURE4: plot_figure4, FIGURE5: plot_figure5}


def plot_figures(df: pd.DataFrame, out_dir: str | os.PathLike,
                 names: Iterable[str] | None = None) -> list[Path]:
    """Write ``<out_dir>/<name>.png`` and ``.pdf`` (``FIGURE_FORMATS``) for each figure stem in
    ``names`` (default: all of ``FIGURES``); returns the written paths. Unknown names raise
    ValueError."""
    names = list(FIGURES) if names is None else list(names)
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise ValueError(f"unknown figure(s) {unknown}; known: {sorted(FIGURES)}")
    out = Path(out_dir)
    written = []
    for name in names:
        written += FIGURES[name](df, *(out / f"{name}.{ext}" for ext in FIGURE_FORMATS))
    return written
