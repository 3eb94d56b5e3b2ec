"""The HTML of a table, the version ``snakemake --report`` shows (``block_html``, ``table_page``).

The report shows a table's page beside its caption, in about half a screen (650 px): a table wider than that
is shown in parts of a few columns (``HTML_PARTS``), each part repeating the columns that name a row, so that
every part fits whole. Numbers stay on one line, text wraps.
"""
from __future__ import annotations

import html
import re

import pandas as pd


# Per table layout (the keys of render's LaTeX headers): (the columns that name a row, [(part title, its
# columns)]); a layout not named here fits whole. Every column of the layout is in one part (``table_parts``).
HTML_PARTS = {
    "claims": (["Claim"], [("Claims and verdicts", ["Statement", "A", "B", "Verdict"]),
                           ("Statistics", ["Metric", "Claimed", "n", "A (%)", "B (%)", "A - B (points)", "95 % CI",
                                           "McNemar p"])]),
    "gains": (["Model"], [("Adversarial stage", ["Adversarial stage", "n", "Adv. time (min)", "Adv. time / f_rb",
                                                 "Adv. MACs (est.)", "Adv. MACs / f_rb"]),
                          ("Whole lineage", ["Lineage time (min)", "Lineage time / f_rb", "Device"])]),
    "audit": (["Model", "Compression"],
              [("Robust accuracy (%)", ["n", "Clean", "PGD", "Worst case"]),
               ("What the suite and its escalation add to PGD, and the real INT8 model",
                ["Gap", "Escalation gain", "Decisive attack", "INT8 robust"]),
               ("Attack-failure checks (%, flagged seeds)", ["Gradient-free gain", "Large-eps standing",
                                                            "More-effort gain", "Zero gradients"])]),
    "compute": (["Model", "Compression"],
                [("Model size", ["n", "Params", "MACs", "Weights", "Checkpoint"]),
                 ("Latency (CPU)", ["Latency (ms)", "Speed-up", "INT8 latency (ms)", "INT8 speed-up"]),
                 ("Real INT8 model: clean accuracy", ["INT8 acc. (%)", "Fake-quant acc. (%)", "INT8 agreement (%)"]),
                 ("Real INT8 model: robustness", ["INT8 robust (%)", "Fake-quant robust (%)"]),
                 ("Whole lineage", ["Lineage time (min)", "Lineage MACs (est.)"]),
                 ("Jobs", ["Peak memory (MB)", "Evaluation (s)"])]),
    "efficiency": (["Model", "Compression"], [("Accuracy (%)", ["n", "Robustness", "Test"]),
                                              ("Cost", ["Cost to obtain", "Cost / f_rb", "Speed-up"]),
                                              ("Pareto-optimal", ["Pareto: obtain", "Pareto: deployed"])]),
    "efficiency_stages": (["Step"], [("This run: wall time", ["Stage", "Nodes", "Wall time (min)", "Wall ratio"]),
                                     ("This run: cost", ["Cost", "Cost ratio"]),
                                     ("The paper", ["Paper (min)", "Paper ratio"])]),
    "controls": (["Compression", "Model"], [("Arm", ["Start", "Objective", "Budget", "n"]),
                                            ("Accuracy (%)", ["Test", "Robustness"]),
                                            ("Training cost", ["Training time (min)", "Training MACs (est.)"])]),
}
_STYLE = ("body{font-family:sans-serif;font-size:13px;margin:1em}"
               "table{border-collapse:collapse;margin:.3em 0 1em}"
               "th,td{border-bottom:1px solid #ccc;padding:.25em .4em;text-align:left;vertical-align:top}"
               "th{background:#f3f3f3}td.number{white-space:nowrap}td.long{overflow-wrap:anywhere}"
               "h4{margin:1em 0 0;font-size:100%}p.note{color:#555;font-size:90%}")
# A number ("82.00 ± 2.83 †", "[-1.20, 3.40]", "13.7 MMAC", "0.00 (2)": a short cell that starts with a digit
# and has no word of five letters), or n/a, stays on one line; text ("3 (1 collapsed)") wraps between words,
# and a word longer than _LONG_WORD (a file's path) anywhere.
_NUMBER_CELL = re.compile(r"^(?:[-+\[]{0,2}\d(?!.*[A-Za-z]{5}).{0,19}|n/a)$")
_LONG_WORD = 24


def table_parts(block: pd.DataFrame, layout: str) -> list[tuple[str, pd.DataFrame]]:
    """[(part title, columns of ``block``)]: the parts of ``HTML_PARTS``, or the whole table untitled; a
    ValueError when the parts do not place exactly the layout's columns."""
    if layout not in HTML_PARTS:
        return [("", block)]
    keys, parts = HTML_PARTS[layout]
    placed = keys + [c for _, columns in parts for c in columns]
    if sorted(placed) != sorted(block.columns):
        raise ValueError(f"the HTML parts of table layout {layout!r} place the columns {placed}, "
                         f"the layout has {list(block.columns)}")
    return [(title, block[keys + columns]) for title, columns in parts]


def table_html(block: pd.DataFrame) -> str:
    """One ``<table>``: number cells marked to stay on one line, cells with a very long word to break it."""
    def cell(value) -> str:
        text = str(value)
        kind = ("number" if _NUMBER_CELL.match(text)
                else "long" if max(map(len, text.split()), default=0) > _LONG_WORD else "")
        attribute = f' class="{kind}"' if kind else ""
        return f"<td{attribute}>{html.escape(text)}</td>"

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in block.columns)
    body = "\n".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in block.itertuples(index=False))
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def block_html(block: pd.DataFrame, layout: str) -> str:
    """One group of a table (a layout DataFrame) as HTML: in the parts of ``HTML_PARTS``, each under its title;
    ``layout``: the table's layout key."""
    return "\n".join((f"<h4>{html.escape(title)}</h4>\n" if title else "") + table_html(part)
                     for title, part in table_parts(block, layout))


def table_page(title: str, body: str, notes: str) -> str:
    """A standalone HTML page: ``title`` (HTML text) above ``body`` (HTML), ``notes`` (HTML text) below."""
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><style>{_STYLE}</style></head><body>\n"
            f"<p>{title}</p>\n{body}\n<p class=\"note\">{notes}</p>\n</body></html>\n")
