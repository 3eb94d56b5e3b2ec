import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")  # this workflow's advfine package

from advfine.job import snakemake_job
from advfine.stages import run_plot

with snakemake_job(snakemake):
    run_plot(snakemake.input.csv, snakemake.params.figures_dir, list(snakemake.params.figures))
