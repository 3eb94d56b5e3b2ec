"""Turn per-model ``eval.json`` files into the paper's tables and figures.

Pipeline: collect -> tables -> render, and figures (all pure functions except the ``write_*`` and
``plot_*`` writers, which write atomically through ``advfine.core.files``):

    from advfine.report.collect import collect_metrics, write_metrics_csv
    from advfine.report.render import write_tables
    from advfine.report.figures import plot_figures

    df = collect_metrics(paths)                 # one row per eval.json, flat columns
    write_metrics_csv(df, "all_metrics.csv")
    write_tables(df, out_dir, 0.8, 8)           # table_names(dataset), as .csv, .md and .tex
    plot_figures(df, fig_dir)                   # FIGURES: Figures 1, 3-6 as .png and .pdf

Modules (import from them; this package re-exports nothing):

* ``collect``: load and validate eval.json files into the DataFrame (``collect_metrics``,
  ``MetricsFileError``, ``METRIC_COLUMNS``) and write it as CSV (``write_metrics_csv``);
* ``stats``: the rows of one model (``select``) and their mean and sample std over seeds
  (``summarize``), per (experiment, dataset, arch) group;
* ``labels``: display names and cell text (``format_cell``, ``level_label``, ``dataset_name``,
  ``latex_model_label``...); the paper's model notation is ``advfine.pipeline.vocab.model_label`` (the figures':
  ``math_model_label``), a node's ``advfine.pipeline.nodes.Node.label``;
* ``tables``: the tables as DataFrames (``table2``, ``table3``, ``table5``,
  ``computational_gains``, ``compute_table``); ``efficiency``: the robustness-cost frontier's tables
  (``efficiency_table``, ``efficiency_stages``); ``stats`` also holds the per-recipe statistics, cost units
  and Pareto marks the frontier's table and figure share (``recipe_stats``, ``cost_unit``, ``pareto_mask``);
* ``render``: the tables as CSV, Markdown, LaTeX and HTML files (``write_tables``); ``html_tables`` writes
  the HTML page the Snakemake report shows, a wide table in parts that fit beside its caption; ``captions``
  holds each table's title and notes, written once and turned into every format;
* ``figures``: Figures 1, 3, 4, 5 and 6 (``plot_figure1``/``3``/``4``/``5``/``6``, ``plot_figures``) and the
  helpers every figure shares (``new_figure``, ``save_figure``, the palette ``model_style``); it needs
  only ``stats`` and ``labels``, so importing it loads no table code;
* ``figure2``: Figure 2 drawn from the t-SNE embeddings ``advfine.core.features`` computes (``plot_figure2``).
"""
