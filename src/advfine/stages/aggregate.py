"""Stage aggregate: all_metrics.csv and the paper's tables (CSV, Markdown, LaTeX, HTML) from the per-model
eval.json files and the run's deployment.json (every model's inference cost)."""
from __future__ import annotations

from advfine.report.collect import collect_metrics, write_metrics_csv
from advfine.report.render import write_tables


def run(config: dict, *, evals: list[str], out_csv: str, out_tables_dir: str, deployment: str | None = None) -> None:
    """Collect ``evals``, joined per node with the deployment.json ``deployment`` (None: the latency columns
    stay empty), into ``out_csv`` and write every table into ``out_tables_dir``, with the compression levels
    of ``report`` (Tables 3 and 5) and the claims' equivalence margin from the config.
    The claims table reads the ``samples.csv`` beside each eval.json."""
    df = collect_metrics(evals, deployment)
    write_metrics_csv(df, out_csv)
    report = config["report"]
    write_tables(df, out_tables_dir, report["prune_sparsity"], report["ptq_bits"], margin=report["equivalence_margin"])
