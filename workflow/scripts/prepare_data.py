import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")  # this workflow's advfine package

from advfine.job import snakemake_job
from advfine.stages import run_prepare_data

with snakemake_job(snakemake) as cfg:
    run_prepare_data(cfg, snakemake.output.data)
