"""The names of the report files the workflow must plan: a light module (no pandas, no torch),
because Snakemake imports it every time it parses the workflow, including inside every job."""
from __future__ import annotations

TABLE_FORMATS = ["csv", "md", "tex"]
FIGURE_FORMATS = ["png", "pdf"]


def table_names(dataset: str) -> list[str]:
    """File stems ``report.write_tables`` writes for an experiment on ``dataset`` (each as .csv, .md,
    .tex). CIFAR10 gets the paper's Tables 4 and 6, every other dataset Tables 3 and 5; the last
    stem, ``compute``, is the per-model compute and memory table (not in the paper)."""
    if dataset == "cifar10":
        return ["table2_baselines", "table4_compressed", "table6_adversarial_finetuning",
                "computational_gains", "compute"]
    return ["table2_baselines", "table3_compressed", "table5_adversarial_finetuning",
            "computational_gains", "compute"]
