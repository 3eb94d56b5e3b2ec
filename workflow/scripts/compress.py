import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")  # this workflow's advfine package

from advfine.job import snakemake_job
from advfine.stages import run_compress

with snakemake_job(snakemake) as cfg:
    run_compress(cfg, snakemake.input.data, snakemake.wildcards.compression, int(snakemake.wildcards.seed),
                 snakemake.input.model, snakemake.input.metrics,
                 snakemake.output.model, snakemake.output.metrics, snakemake.threads)
