"""Figure 2 drawn from ``advfine.core.features.figure2_embeddings``' output: one row per model pair, columns
input and layers 6-8, each model in its colour of every figure (``figures.model_style``)."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from advfine.core.features import COLUMNS
from advfine.pipeline.vocab import FIGURE2_MODELS, figure2_label, mathtext_label
from advfine.report.figures import model_style, new_figure, paper_style, save_figure

# The paper's models by their labels, for their colours (``report.figures.model_style``, the same in every
# figure); models under other labels are blue (A) and red (B) of their pair.
_PAPER_MODELS = {figure2_label(name): identity for name, identity in FIGURE2_MODELS.items()}
_OTHER_COLOURS = {"A": "tab:blue", "B": "tab:red"}


def _point_style(model: str, role: str, condition: str) -> tuple[str, str]:
    """(colour, marker) of a group of points: a model's colour, dots for clean and crosses for attacked
    images; the clean input images gray."""
    if model == "":
        return "tab:gray", "o"
    colour = (model_style(*_PAPER_MODELS[model])[0] if model in _PAPER_MODELS
              else _OTHER_COLOURS.get(role, "black"))
    return colour, "o" if condition == "clean" else "x"


@paper_style
def plot_figure2(df: pd.DataFrame, path_png: str | os.PathLike,
                 path_pdf: str | os.PathLike | None = None) -> list[Path]:
    """Figure 2 from ``figure2_embeddings`` output: one row per model pair, columns input and
    layers 6-8; writes PNG (and PDF when given) and returns the paths."""
    rows = sorted(df["row"].unique()) if len(df) else []
    columns = [c for c in COLUMNS if c in set(df["column"])] or COLUMNS
    fig = new_figure(3.4 * len(columns), 3.2 * max(len(rows), 1) + 0.8)
    axes = fig.subplots(max(len(rows), 1), len(columns), squeeze=False)
    for i, (ax_row, row) in enumerate(zip(axes, rows or [None])):
        sub = df[df["row"] == row] if row is not None else df
        pair = sub["pair"].iloc[0] if len(sub) else ""
        label_a, _, label_b = pair.partition(" vs ")
        role = {label_a: "A", label_b: "B", "": ""}
        for ax, column in zip(ax_row, columns):
            panel = sub[sub["column"] == column]
            for (model, condition), pts in panel.groupby(["model", "condition"], sort=False):
                color, marker = _point_style(model, role.get(model, ""), condition)
                shown = mathtext_label(model)
                text = ("clean" if model == "" else f"PGD vs {shown}" if column == "input"
                        else f"{shown}: {'PGD' if condition == 'adversarial' else 'clean'}")
                ax.scatter(pts["tsne_x"], pts["tsne_y"], s=8, c=color, marker=marker,
                           linewidths=0.8, alpha=0.7, label=text)
            if len(panel) == 0:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", color="gray",
                        transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(column)
            if column in ("input", "layer 6") and len(panel):
                ax.legend(fontsize=7, markerscale=1.5, loc="best", framealpha=0.7)
        ax_row[0].set_ylabel(f"{mathtext_label(label_a)} vs {mathtext_label(label_b)}" if pair else "",
                             fontsize=10)
    fig.suptitle("t-SNE of the input images and of the outputs of layers 6-8, clean and PGD-attacked "
                 "(PGD against each model)", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path_png, path_pdf)
