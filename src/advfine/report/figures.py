"""The paper's Figures 1, 3 and 4 (and our Figures 5, robustness curves, and 6, the robustness-cost frontier)
from the per-model DataFrame (``collect_metrics`` or all_metrics.csv), and the figure helpers the other
figures share (``new_figure``, ``save_figure``, ``paper_style``, ``model_style``, ``draw_accuracy``; Figure 2,
the t-SNE of features, is drawn by ``advfine.core.features``).

Figures (PNG, and PDF when a PDF path is given): Figure 1 (accuracy vs pruning sparsity and vs
bit width after adversarial fine-tuning), Figure 3 (the same without fine-tuning), Figure 4
(QAT robust models f_rb^q vs bit width, no fine-tuning). Points are the mean over seeds, error
bars the sample std, drawn clipped to the 0-100 % accuracy axis (the numbers are not clipped); a
model measured at several levels is a line through its points, at one level points alone. Test
accuracy is a solid line with filled markers, robustness a dashed line with open markers; dotted
lines are the dense models without fine-tuning; one panel row per (experiment, dataset, arch),
titled by dataset and architecture. A model with a diverged or collapsed seed (``stats``) has no
point: the figure writes "diverged" or "collapsed" where it would be (Figure 5: in the legend, no
curve; Figure 6 averages the other seeds and counts those left out in the legend). Every model is
labelled in the paper's notation (``vocab.math_model_label``) and drawn in its own colour and marker
(``model_style``) in every figure. Each ``plot_*`` function writes a PNG to ``path_png`` and, when
``path_pdf`` is given, the same figure as PDF, and returns the written paths; ``plot_figures`` writes both
for figures named by their stems (``FIGURES``).

This module needs no other part of ``advfine.report`` but ``labels`` and ``stats``.
"""
from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from advfine.core.files import atomic_path
from advfine.pipeline.vocab import (DENSE, FIGURE1, FIGURE3, FIGURE4, FIGURE5, FIGURE6, FIGURE_FORMATS, PRUNE, PTQ,
                                    QAT, math_model_label)
from advfine.report.labels import arch_name, dataset_name, health_text, level_label
from advfine.report.stats import (DEPLOY_UNITS, GROUP_COLS, OBTAIN_UNITS, RECIPE_STATS_COLS, CostUnit, collapsed_mask,
                                  cost_unit, groups, recipe_stats, select, summarize)

ACCURACY_LIMITS = (0.0, 100.0)  # every accuracy axis, in %
# The paper's notation set as LaTeX sets it (Computer Modern math); other text in matplotlib's sans serif.
PAPER_RC = {"mathtext.fontset": "cm"}

# The palette: one colour per base model and fine-tuning, one marker per compression method, so that a
# model (train, method, fine-tuning) looks the same in every figure. Okabe-Ito colours (distinct with
# colour-blindness); models outside the paper's figures are black.
MODEL_COLOURS = {("st", "none"): "#0072B2", ("rb", "none"): "#D55E00",   # f_st blue, f_rb vermilion
                 ("st", "ad"): "#009E73", ("rb", "ad"): "#CC79A7",       # T_ad(f_st) green, T_ad(f_rb) purple
                 ("st", "st"): "#56B4E9", ("rb", "st"): "#E69F00"}       # T_st(f_st) sky blue, T_st(f_rb) orange
OTHER_COLOUR = "black"
COMPRESSION_MARKERS = {DENSE: "o", PRUNE: "s", PTQ: "^", QAT: "D"}

# (metric key, legend word, line style, filled marker) of the two accuracies of a model
_METRICS = [("test", "test", "-", True), ("robust", "robustness", "--", False)]
_QUANT_XLABEL = {PTQ: "post-training quantization bit width",
                 QAT: "quantization-aware training bit width"}
# The columns a figure reads (the empty stand-in when there are no rows has them).
_USED_COLUMNS = [*GROUP_COLS, "seed", "train", "method", "level", "finetune", "clean_acc",
                 "robust_acc"]


def model_style(train: str, method: str, finetune: str) -> tuple[str, str]:
    """(colour, marker) of a model in every figure: colour by base model and fine-tuning, marker by
    compression method."""
    return MODEL_COLOURS.get((train, finetune), OTHER_COLOUR), COMPRESSION_MARKERS.get(method, "o")


def paper_style(plot):
    """Decorator of a function that draws and saves figures: it does so under ``PAPER_RC``."""
    @functools.wraps(plot)
    def styled(*args, **kwargs):
        with rc_context(PAPER_RC):
            return plot(*args, **kwargs)
    return styled


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


def _model_order(train: str, method: str, level, finetune: str) -> tuple:
    """Legend order: f_st's models before f_rb's, unfine-tuned before fine-tuned, dense, pruned, PTQ, QAT."""
    def rank(value, order):
        return order.index(value) if value in order else len(order)
    return (rank(train, ("st", "rb")), rank(finetune, ("none", "st", "ad")), finetune,
            rank(method, tuple(COMPRESSION_MARKERS)), float(level) if pd.notna(level) else -1.0)


def draw_accuracy(ax, x, mean, std, *, colour: str, marker: str, label: str, linestyle: str = "-",
                  filled: bool = True, xerr=None):
    """Mean ± std of an accuracy (in %) at the levels ``x``: error bars drawn clipped to
    ``ACCURACY_LIMITS`` (mean ± std may pass 100 %; the bar stops at the axis, the mean is drawn as
    is), a line through the points when there are several levels, the points alone at one level;
    ``xerr``: horizontal error bars too (as ``errorbar`` takes them). Returns the ``ErrorbarContainer``."""
    mean = np.asarray(mean, dtype=float)
    std = np.nan_to_num(np.asarray(std, dtype=float))
    low, high = ACCURACY_LIMITS
    yerr = [mean - np.clip(mean - std, low, high), np.clip(mean + std, low, high) - mean]
    drawn = ax.errorbar(x, mean, yerr=yerr, xerr=xerr, label=label, color=colour, marker=marker,
                        linestyle=linestyle if len(mean) > 1 else "none",
                        markerfacecolor=colour if filled else "white", markeredgecolor=colour,
                        capsize=3, linewidth=1.5, markersize=6)
    for artist in drawn.get_children():  # a marker or cap at 0 or 100 % is drawn whole, over the frame
        artist.set_clip_on(False)
    return drawn


def _accuracy_axis(ax, ylabel: str = "accuracy (%)") -> None:
    ax.set_ylim(*ACCURACY_LIMITS)
    ax.set_yticks(np.arange(0, 101, 20))
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


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
    """Draw one panel (accuracy vs compression level) with its legend below it; returns the seed
    counts of the points."""
    curves = {train: _curve(g, train, method, finetune) for train in trains}
    if all(c.empty for c in curves.values()):
        _no_data(ax, title)
        return []
    if method in _QUANT_XLABEL:  # categorical bit widths (INT16 ... INT1), most bits on the left
        bits = sorted({int(b) for c in curves.values() for b in c["level"]}, reverse=True)
        pos = {b: i for i, b in enumerate(bits)}
        # the models of a bit width side by side around its tick, so that none hides another
        dodge = {train: 0.08 * (i - (len(trains) - 1) / 2) for i, train in enumerate(trains)}
        xof = lambda levels, train: [pos[int(b)] + dodge[train] for b in levels]  # noqa: E731
        ax.set_xticks(range(len(bits)), [f"INT{b}" for b in bits])
        ax.set_xlim(-0.5, len(bits) - 0.5)
        ax.set_xlabel(_QUANT_XLABEL[method])
    else:  # sparsity ratios, on their whole range
        xof = lambda levels, train: list(levels)  # noqa: E731
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel("pruning sparsity ratio")
    ns: list[int] = []
    handles: dict[str, list] = {key: [] for key, _, _, _ in _METRICS}
    dense_handles = []
    for train in trains:
        c = curves[train]
        colour, marker = model_style(train, method, finetune)
        label = math_model_label(train, method, finetune)
        if not c.empty:
            for key, word, linestyle, filled in _METRICS:
                handles[key].append(draw_accuracy(
                    ax, xof(c["level"], train), c[f"{key}_mean"], c[f"{key}_std"], colour=colour, marker=marker,
                    label=f"{label}: {word}", linestyle=linestyle, filled=filled))
            ns += list(c["n"]) * len(_METRICS)
            for x, diverged, collapsed in zip(xof(c["level"], train), c["diverged"], c["collapsed"]):
                if diverged or collapsed:  # no number for such a model: say so where its point would be
                    ax.annotate("diverged" if diverged else "collapsed", (x, 5), color=colour, rotation=90,
                                fontsize=8, ha="center")
        dense = select(g, train, DENSE, "none")
        if len(dense):
            dense_colour, _ = model_style(train, DENSE, "none")
            s = summarize(dense)
            for key, _, _, _ in _METRICS:  # no line for a diverged or collapsed dense model (NaN)
                ax.axhline(s[f"{key}_mean"], color=dense_colour, linestyle=":", linewidth=1.2)
            health = health_text(s["diverged"], s["collapsed"], s["n"])
            dense_handles.append(Line2D([], [], color=dense_colour, linestyle=":", linewidth=1.2,
                                        label=f"{math_model_label(train)} (dense, no fine-tuning)"
                                        + (f": {health}" if health else "")))
    _accuracy_axis(ax)
    ax.set_title(title)
    # legend below the panel, filled column by column: one row per model, test on the left, robustness
    # on the right, then the dense references
    half = (len(dense_handles) + 1) // 2
    ax.legend(handles=handles["test"] + dense_handles[:half] + handles["robust"] + dense_handles[half:],
              loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=9, frameon=False)
    return ns


def _where(keys: tuple) -> str:
    """The title line of one (experiment, dataset, arch) group: ``"Fashion-MNIST, 8-layer CNN\\n"``."""
    _, dataset, arch = keys
    return f"{dataset_name(dataset)}, {arch_name(arch)}\n" if dataset else ""


def _heading(rows: list, what: str) -> str:
    """The figure's title: what it shows, after the dataset and architecture when there is one group
    (several groups name theirs in their panels' titles)."""
    where = _where(rows[0][0]) if len(rows) == 1 else ""
    return where + what[0].upper() + what[1:]


def _plot_levels(df: pd.DataFrame, path_png, path_pdf, panels: list[tuple[str, str, str]],
                 trains: tuple[str, ...], heading: str) -> list[Path]:
    """One row of ``panels`` (method, finetune, title) per (experiment, dataset, arch)."""
    rows = groups(df) or [(("", "", ""), pd.DataFrame(columns=_USED_COLUMNS))]
    fig = new_figure(max(5.0 * len(panels), 6.0), 5.0 * len(rows) + 1.0)
    fig.set_layout_engine("constrained")
    axes = fig.subplots(len(rows), len(panels), squeeze=False)
    ns: list[int] = []
    for (keys, g), row_axes in zip(rows, axes):
        where = _where(keys) if len(rows) > 1 else ""
        for ax, (method, finetune, title) in zip(row_axes, panels):
            ns += _panel(ax, g, method, finetune, trains, where + title)
    seeds = ("no data" if not ns else f"n = {ns[0]} seed{'s' * (ns[0] != 1)}" if min(ns) == max(ns)
             else f"n = {min(ns)}-{max(ns)} seeds")
    fig.suptitle(_heading(rows, heading) + f"\nmean ± sample std over seeds ({seeds})", fontsize=11)
    return save_figure(fig, path_png, path_pdf)


@paper_style
def plot_figure1(df: pd.DataFrame, path_png: str | os.PathLike,
                 path_pdf: str | os.PathLike | None = None) -> list[Path]:
    """Figure 1: test accuracy and robustness of standard and robust models vs compression level
    after adversarial fine-tuning (finetune == "ad"); left pruning sparsity, right PTQ bit width;
    error bars = std over seeds; one panel row per (experiment, dataset, arch)."""
    panels = [(PRUNE, "ad", r"$\ell_1$-norm pruning, $\mathcal{T}_{ad}(f^{p})$"),
              (PTQ, "ad", r"post-training quantization, $\mathcal{T}_{ad}(f^{q})$")]
    return _plot_levels(df, path_png, path_pdf, panels, ("st", "rb"),
                        r"compressed models after adversarial fine-tuning $\mathcal{T}_{ad}(\cdot)$")


@paper_style
def plot_figure3(df: pd.DataFrame, path_png: str | os.PathLike,
                 path_pdf: str | os.PathLike | None = None) -> list[Path]:
    """Figure 3: the same as Figure 1 without fine-tuning (finetune == "none")."""
    panels = [(PRUNE, "none", r"$\ell_1$-norm pruning, $f^{p}$"),
              (PTQ, "none", r"post-training quantization, $f^{q}$")]
    return _plot_levels(df, path_png, path_pdf, panels, ("st", "rb"),
                        "compressed models without fine-tuning")


@paper_style
def plot_figure4(df: pd.DataFrame, path_png: str | os.PathLike,
                 path_pdf: str | os.PathLike | None = None) -> list[Path]:
    """Figure 4: robust models quantized by quantization-aware training (method "qat", train
    "rb", finetune "none"): test accuracy and robustness vs bit width, one point per bit width."""
    panels = [(QAT, "none", r"quantization-aware training, $f_{rb}^{q}$")]
    return _plot_levels(df, path_png, path_pdf, panels, ("rb",),
                        "robust models with quantization-aware training, no fine-tuning")


@paper_style
def plot_figure5(df: pd.DataFrame, path_png: str | os.PathLike,
                 path_pdf: str | os.PathLike | None = None) -> list[Path]:
    """Figure 5 (not in the paper): robust accuracy against the attack radius (multiples of the
    evaluation's eps, APGD-CE) for the models whose evaluation measured a curve (the models
    of Table 5); mean ± sample std over seeds, one panel per (experiment, dataset, arch)."""
    columns = sorted((c for c in df.columns if c.startswith("robust_acc_eps_x")),
                     key=lambda c: float(c[len("robust_acc_eps_x"):]))
    rows = groups(df) or [(("", "", ""), pd.DataFrame(columns=_USED_COLUMNS))]
    fig = new_figure(8.0, 4.6 * len(rows) + 1.0)
    fig.set_layout_engine("constrained")
    axes = fig.subplots(len(rows), 1, squeeze=False)
    for (keys, g), (ax,) in zip(rows, axes):
        title = _where(keys).strip() if len(rows) > 1 else ""
        measured = g[g[columns].notna().any(axis=1)] if columns else g.iloc[0:0]
        if measured.empty:
            _no_data(ax, title)
            continue
        eps = measured["attack_eps_pixel"].astype(float).dropna()
        unit = float(eps.iloc[0]) if len(eps) else 1.0
        radii = [float(c[len("robust_acc_eps_x"):]) * unit for c in columns]
        curves = measured.groupby(["train", "method", "level", "finetune"], dropna=False, sort=False)
        handles = []
        for (train, method, level, finetune), sel in sorted(curves, key=lambda kv: _model_order(*kv[0])):
            label = math_model_label(train, method, finetune)
            colour, marker = model_style(train, method, finetune)
            collapsed = collapsed_mask(sel)
            if collapsed.any():  # no curve for such a model: its legend entry says so
                handles += ax.plot([], [], linestyle="none", marker="x", color=colour,
                                   label=f"{label}: collapsed ({int(collapsed.sum())}/{len(sel)})")
                continue
            values = sel[columns].astype(float) * 100.0
            handles.append(draw_accuracy(ax, radii, values.mean(), values.std(ddof=1).fillna(0.0), colour=colour,
                                         marker=marker, label=f"{label} (n = {len(sel)})"))
        ax.axvline(unit, color="gray", linestyle=":", linewidth=1)
        ax.set_xlim(left=0.0)
        ax.set_xlabel(r"attack radius $\epsilon$ (pixel units); dotted: the evaluation's $\epsilon$")
        _accuracy_axis(ax, "robust accuracy (%)")
        ax.set_title(title)
        ax.legend(handles=handles, fontsize=9, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.suptitle(_heading(rows, "robust accuracy against the attack radius (APGD-CE)")
                 + "\nmean ± sample std over seeds", fontsize=11)
    return save_figure(fig, path_png, path_pdf)


# Figure 6's panels: (the cost, its units in order of preference, title).
_FRONTIER_PANELS = (("obtain", OBTAIN_UNITS, "(a) robustness against the cost to obtain"),
                    ("deploy", DEPLOY_UNITS, "(b) robustness against the deployed cost"))
# On a log axis a cost's error bar stops at this share of its mean rather than at 0 or below.
_LOG_BAR_FLOOR = 0.1


def _recipe_label(r) -> str:
    """A recipe in the legend: ``$T_ad(f_st^p)$, sparsity 0.8 (n = 2, 1 collapsed left out)``."""
    label = math_model_label(r.train, r.method, r.finetune)
    if r.method != DENSE:
        label += ", " + level_label(r.method, None if pd.isna(r.level) else float(r.level))
    left_out = health_text(r.diverged, r.collapsed, r.n)
    return label + (f" (n = {r.scored}, left out: {left_out})" if left_out else f" (n = {r.scored})")


def _frontier_panel(ax, recipes: pd.DataFrame, cost: str, unit: CostUnit, title: str) -> list:
    """Robust accuracy against one cost (``cost``: "obtain" or "deploy") for every recipe, the Pareto-optimal
    ones ringed and joined by the staircase of the best robustness each cost buys; returns the legend handles
    (the recipes', then the Pareto marks)."""
    drawn = recipes[recipes["robust_mean"].notna() & recipes[f"{cost}_mean"].notna()]
    if drawn.empty:
        _no_data(ax, title)
        return []
    handles = []
    for r in recipes.itertuples():
        colour, marker = model_style(r.train, r.method, r.finetune)
        mean, std = getattr(r, f"{cost}_mean"), getattr(r, f"{cost}_std")
        if math.isnan(r.robust_mean) or math.isnan(mean):  # no scored seed, or no cost recorded: no point
            handles += ax.plot([], [], linestyle="none", marker="x", color=colour, label=_recipe_label(r))
            continue
        std = 0.0 if math.isnan(std) else std
        xerr = [[min(std, (1 - _LOG_BAR_FLOOR) * mean)], [std]]
        handles.append(draw_accuracy(ax, [mean], [r.robust_mean], [r.robust_std], colour=colour, marker=marker,
                                     label=_recipe_label(r), xerr=xerr))
        if r.method != DENSE:  # the level beside its point: the legend's colours repeat over the levels
            ax.annotate(level_label(r.method, None if pd.isna(r.level) else float(r.level)).replace("sparsity ", ""),
                        (mean, r.robust_mean), textcoords="offset points", xytext=(4, 4), fontsize=6,
                        color=colour)
    front = drawn[drawn[f"pareto_{cost}"]].sort_values([f"{cost}_mean", "robust_mean"])
    ring = ax.scatter(front[f"{cost}_mean"], front["robust_mean"], s=260, facecolors="none", edgecolors="black",
                      linewidths=1.6, zorder=4, label="Pareto-optimal recipe")
    stairs, = ax.step(front[f"{cost}_mean"], front["robust_mean"], where="post", color="black", linewidth=1.0,
                      alpha=0.7, zorder=1, label="Pareto frontier")
    ring.set_clip_on(False)
    ax.set_xscale("log")
    ax.set_xlabel(unit.axis + ", log scale")
    _accuracy_axis(ax, "worst-case robust accuracy (%)")
    ax.set_title(title)
    return handles + [ring, stairs]


@paper_style
def plot_figure6(df: pd.DataFrame, path_png: str | os.PathLike,
                 path_pdf: str | os.PathLike | None = None) -> list[Path]:
    """Figure 6 (not in the paper): the robustness-cost frontier. Per (experiment, dataset, arch) a row of
    two panels, worst-case robust accuracy against (a) the cost to obtain each recipe (train, method, level,
    finetune) and (b) its deployed cost, each in the first unit of ``stats.OBTAIN_UNITS`` /
    ``stats.DEPLOY_UNITS`` every node of the group recorded (named on the axis), log scale; one point per
    recipe, mean ± sample std over its seeds that neither diverged nor collapsed in both axes
    (``stats.recipe_stats``), n in the legend; the Pareto-optimal recipes (``stats.pareto_mask``) ringed and
    joined by the Pareto staircase."""
    rows = groups(df) or [(("", "", ""), pd.DataFrame(columns=_USED_COLUMNS))]
    fig = new_figure(17.0, 6.5 * len(rows) + 1.0)
    fig.set_layout_engine("constrained")
    axes = fig.subplots(len(rows), len(_FRONTIER_PANELS), squeeze=False)
    for (keys, g), row_axes in zip(rows, axes):
        where = _where(keys) if len(rows) > 1 else ""
        units = {cost: cost_unit(g, options) for cost, options, _ in _FRONTIER_PANELS}
        recipes = (recipe_stats(g, units["obtain"], units["deploy"]) if len(g)
                   else pd.DataFrame(columns=RECIPE_STATS_COLS))
        recipes = recipes.iloc[sorted(range(len(recipes)), key=lambda i: _model_order(
            *recipes.iloc[i][["train", "method", "level", "finetune"]]))]
        handles = []
        for ax, (cost, _, title) in zip(row_axes, _FRONTIER_PANELS):
            handles = _frontier_panel(ax, recipes, cost, units[cost], where + title) or handles
        if handles:  # the same recipes and marks in both panels: one legend, right of the row
            row_axes[-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
                                fontsize=7, ncol=1 if len(handles) <= 30 else 2)
    fig.suptitle(_heading(rows, "robust accuracy against the cost to obtain and the deployed cost of each recipe")
                 + "\nmean ± sample std over the seeds that neither diverged nor collapsed; ringed and joined: "
                   "Pareto-optimal (no recipe more robust at no more cost)", fontsize=11)
    return save_figure(fig, path_png, path_pdf)


# Figure stems (as the workflow names the files) -> plot function.
FIGURES = {FIGURE1: plot_figure1, FIGURE3: plot_figure3, FIGURE4: plot_figure4, FIGURE5: plot_figure5,
           FIGURE6: plot_figure6}


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
