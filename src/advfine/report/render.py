"""Write the tables of one experiment as CSV, Markdown, LaTeX and HTML (``write_tables``).

One experiment (one config) holds one dataset. For it ``write_tables`` writes each table of
``tables`` under its stem from ``advfine.pipeline.vocab.table_names(dataset)`` (Tables 3/5 become 4/6 on
cifar10), in every ``TABLE_FORMATS``:

* ``.csv``: the table's DataFrame as is (all numbers, the (experiment, dataset, arch) columns
  first);
* ``.md`` and ``.tex`` (booktabs): the paper's layout, with the ``n`` column added, dataset and
  architecture named in the caption; several (experiment, dataset, arch) groups are separated by
  a titled block. LaTeX renders model labels as math and escapes every other cell;
* ``.html``: the Markdown layout as a standalone page, the version ``snakemake --report`` shows; a wide
  table in parts of a few columns, so that it fits whole beside its caption there (``html_tables``).

Every format is one caption of ``captions`` (title above, notes below) around one body (``_body``: the
groups' tables, each after its group title when there are several).
"""
from __future__ import annotations

import os
from html import escape
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from advfine.core.files import write_text
from advfine.pipeline.vocab import TABLE_FORMATS, table_names
from advfine.report import captions
from advfine.report.audit_table import evaluation_audit, format_points
from advfine.report.captions import Caption
from advfine.report.claims import claims_table, layout_claims
from advfine.report.controls import controls_table, layout_controls
from advfine.report.efficiency import efficiency_stages, efficiency_table, layout_efficiency, layout_efficiency_stages
from advfine.report.html_tables import block_html, table_page
from advfine.report.labels import (dataset_name, format_count, format_ratio, format_speedup, group_title,
                                   latex_escape, latex_model_label, seeds_text)
from advfine.report.stats import GROUP_COLS
from advfine.report.tables import FT_KEYS, computational_gains, compute_table, table2, table3, table5


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
    for ft, title in FT_KEYS:
        out[title] = rows[ft]
    out["n"] = [_seed_counts(r, [f"{ft}_n" for ft, _ in FT_KEYS]) for _, r in rows.iterrows()]
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
        "INT8 agreement (%)": rows["int8_agreement"],
        "INT8 robust (%)": rows["int8_robust_acc"], "Fake-quant robust (%)": rows["fake_quant_robust_acc"],
        "Lineage time (min)": rows["lineage_wall_min"], "Lineage MACs (est.)": rows["lineage_macs"],
        "Peak memory (MB)": rows["peak_rss_mb"], "Evaluation (s)": rows["eval_s"],
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
    "audit": ([r" & & & \multicolumn{3}{c}{Robust accuracy (\%)} & & & &"
               r" \multicolumn{4}{c}{Checks (\%, flagged seeds)} & \\",
               r"\cmidrule(lr){4-6} \cmidrule(lr){10-13}",
               r"Model & Compression & $n$ & Clean & PGD & Worst case & Gap & Escalation & Decisive attack"
               r" & Gradient-free & Large $\epsilon$ & More effort & Zero grad. & INT8 robust \\"], "llrccccclccccc"),
    "compute": ([r" & & & \multicolumn{4}{c}{Model size} & \multicolumn{2}{c}{Latency (CPU)}"
                 r" & \multicolumn{7}{c}{Real INT8} & \multicolumn{2}{c}{Whole lineage} & & \\",
                 r"\cmidrule(lr){4-7} \cmidrule(lr){8-9} \cmidrule(lr){10-16} \cmidrule(lr){17-18}",
                 r"Model & Compression & $n$ & Params & MACs & Weights & Checkpoint & ms & Speed-up"
                 r" & ms & Speed-up & Acc. (\%) & Fake-quant (\%) & Agreement (\%) & Robust (\%)"
                 r" & Fake-quant robust (\%)"
                 r" & Time (min) & MACs (est.) & Peak mem. (MB) & Eval. (s) \\"], "llrrrrrccccccccccccc"),
    "controls": ([r"Compression & Model & Start & Objective & Budget & $n$ & Test & Robustness & Time (min)"
                  r" & MACs (est.) \\"], "llllllccrr"),
    "efficiency": ([r" & & & \multicolumn{2}{c}{Accuracy (\%)} & \multicolumn{2}{c}{Cost to obtain} & Deployed"
                    r" & \multicolumn{2}{c}{Pareto-optimal} \\",
                    r"\cmidrule(lr){4-5} \cmidrule(lr){6-7} \cmidrule(lr){9-10}",
                    r"Model & Compression & $n$ & Robustness & Test & Mean & / $f_{rb}$ & Speed-up & Obtain"
                    r" & Deployed \\"], "llrccrrrcc"),
    "efficiency_stages": ([r" & & & \multicolumn{4}{c}{This run} & \multicolumn{2}{c}{Paper} \\",
                           r"\cmidrule(lr){4-7} \cmidrule(lr){8-9}",
                           r"Step & Stage & Nodes & Wall time (min) & Ratio & Cost & Ratio & Minutes & Ratio \\"],
                          "llrcrcrrr"),
    "claims": ([r"Claim & Statement & A & B & Metric & Claimed & $n$ & A (\%) & B (\%) & A $-$ B & 95\,\% CI"
                r" & McNemar $p$ & Verdict \\"], "lp{4cm}llllrrrrrrl"),
}


def _blocks(table: pd.DataFrame, layout) -> list[tuple[tuple, pd.DataFrame]]:
    """[(group keys, paper-layout DataFrame)] per (experiment, dataset, arch) group."""
    if table.empty:
        return []
    return [(keys, layout(rows)) for keys, rows in table.groupby(GROUP_COLS, sort=True)]


def _body(blocks: list, table, heading, separator: str, no_data: str) -> str:
    """The body of a table in one format: ``table(block)`` of each group, after ``heading(its title)`` and
    between ``separator`` when there are several groups; ``no_data`` when there is none."""
    if not blocks:
        return no_data
    if len(blocks) == 1:
        return table(blocks[0][1])
    return separator.join(heading(group_title(keys)) + table(block) for keys, block in blocks)


def _markdown(caption: Caption, blocks: list) -> str:
    def md(block: pd.DataFrame) -> str:
        # disable_numparse: cells are final text ("1.00" must not become "1")
        return block.to_markdown(index=False, disable_numparse=True)

    body = _body(blocks, md, lambda title: f"**{title}**\n\n", "\n\n", "(no data)")
    return f"{captions.markdown(caption.numbered_title)}\n\n{body}\n\n{captions.markdown(caption.notes)}\n"


def _html(caption: Caption, blocks: list, layout: str) -> str:
    body = _body(blocks, lambda block: block_html(block, layout), lambda title: f"<h3>{escape(title)}</h3>\n",
                 "\n", "<p>(no data)</p>")
    return table_page(captions.html(caption.numbered_title), body, captions.html(caption.notes))


def _latex(caption: Caption, label: str, blocks: list, header: list[str], colspec: str) -> str:
    """A booktabs table float (needs ``\\usepackage{booktabs}``). Model labels become math,
    other cells are escaped; several groups are separated by a titled ``\\midrule``."""
    ncols = len(colspec)

    def rows(block: pd.DataFrame) -> str:
        return "\n".join(" & ".join(latex_model_label(v) if col == "Model" and v else _latex_text(v)
                                    for col, v in row.items()) + r" \\" for _, row in block.iterrows())

    def heading(title: str) -> str:
        return rf"\multicolumn{{{ncols}}}{{l}}{{\emph{{{latex_escape(title)}}}}} \\" + "\n"

    body = _body(blocks, rows, heading, "\n\\midrule\n", rf"\multicolumn{{{ncols}}}{{c}}{{no data}} \\")
    lines = ["% Written by advfine.report; needs \\usepackage{booktabs}.",
             r"\begin{table}[htbp]", r"\centering", rf"\caption{{{captions.latex(caption.title)}}}",
             rf"\label{{tab:{label}}}", rf"\begin{{tabular}}{{{colspec}}}", r"\toprule", *header, r"\midrule",
             body, r"\bottomrule", r"\end{tabular}", "",
             rf"\par\smallskip{{\footnotesize {captions.latex(caption.notes)}}}", r"\end{table}", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- writers

def _layout_audit(rows: pd.DataFrame) -> pd.DataFrame:
    def check(name):
        return [f"{format_points(v)} ({int(k)})" for v, k in zip(rows[f"{name}_mean"], rows[f"{name}_flagged"])]

    return pd.DataFrame({
        "Model": rows["model"], "Compression": rows["compression_level"],
        "n": [seeds_text(*counts) for counts in zip(rows["n"], rows["diverged"], rows["collapsed"])],
        "Clean": rows["clean"], "PGD": rows["pgd"], "Worst case": rows["worst_case"],
        "Gap": rows["gap_mean"].map(format_points),
        "Escalation gain": [f"{format_points(v)} ({int(k)})" for v, k in zip(rows["escalation_gain_mean"],
                                                                            rows["escalated"])],
        "Decisive attack": rows["decisive_attack"],
        "Gradient-free gain": check("gradient_free_gain"), "Large-eps standing": check("large_eps_standing"),
        "More-effort gain": check("more_effort_gain"), "Zero gradients": check("zero_gradient_share"),
        "INT8 robust": rows["int8_robust"],
    }).reset_index(drop=True)


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
                 ptq_bits: int | Mapping[str, int], dataset: str | None = None, margin: float = 5.0) -> list[Path]:
    """Write the tables of one experiment into ``out_dir`` (atomically): for each stem of
    ``table_names(dataset)`` a ``.csv`` (all numbers, group columns), ``.md`` and ``.tex``
    (booktabs) in the paper's layout. ``dataset`` defaults to the single dataset in ``df``
    (ValueError if there are several, or none and no ``dataset``). ``prune_level``/``ptq_bits``
    are one value or a {dataset: value} mapping; ``margin``: the claims table's equivalence margin in
    points. Returns the written paths."""
    dataset = _single_dataset(df, dataset)
    table_captions = captions.table_captions(df, dataset, prune_level, ptq_bits, margin)
    tables = {  # by layout key, in the order of table_names(dataset): (CSV table, layout)
        "table2": (table2(df), _layout_table2),
        "table3": (table3(df, prune_level, ptq_bits), _layout_table3),
        "table5": (table5(df, prune_level, ptq_bits), _layout_table5),
        "gains": (computational_gains(df, prune_level, ptq_bits), _layout_gains),
        "compute": (compute_table(df), _layout_compute),
        "audit": (evaluation_audit(df), _layout_audit),
        "controls": (controls_table(df), layout_controls),
        "efficiency": (efficiency_table(df), layout_efficiency),
        "efficiency_stages": (efficiency_stages(df), layout_efficiency_stages),
        "claims": (claims_table(df, prune_level, ptq_bits, margin), layout_claims),
    }
    out = Path(out_dir)
    written = []
    for stem, (key, (table, layout)) in zip(table_names(dataset), tables.items(), strict=True):
        written += write_table(out, stem, table, layout, key, table_captions[key])
    return written


def write_table(out: Path, stem: str, table: pd.DataFrame, layout, key: str, caption: Caption) -> list[Path]:
    """One table in every ``TABLE_FORMATS`` (atomically): the CSV as is, the others in ``layout`` (``key``: its
    LaTeX header and HTML parts) with ``caption``."""
    blocks = _blocks(table, layout)
    header, colspec = _TEX_HEADERS[key]
    files = {
        "csv": table.to_csv(index=False, lineterminator="\n"),
        "md": _markdown(caption, blocks),
        "html": _html(caption, blocks, key),
        "tex": _latex(caption, stem, blocks, header, colspec),
    }
    written = []
    for ext in TABLE_FORMATS:
        path = out / f"{stem}.{ext}"
        write_text(path, files[ext])
        written.append(path)
    return written
