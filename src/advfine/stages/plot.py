"""Stage plot: the paper's Figures 1, 3 and 4 and our Figures 5 and 6 (PNG and PDF) from all_metrics.csv."""
from __future__ import annotations

import pandas as pd

from advfine.report.figures import plot_figures


def run(config: dict, *, metrics_csv: str, out_dir: str, figures: list[str]) -> None:
    """Draw the named ``figures`` (see ``vocab.plot_figure_names``) into ``out_dir``."""
    plot_figures(pd.read_csv(metrics_csv), out_dir, figures)
