import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")  # this workflow's advfine package

from advfine.job import snakemake_job
from advfine.stages import run_train_base

with snakemake_job(snakemake) as cfg:
    run_train_base(cfg, snakemake.input.data, snakemake.wildcards.train, int(snakemake.wildcards.seed),
                   snakemake.output.model, snakemake.output.metrics, snakemake.threads)
