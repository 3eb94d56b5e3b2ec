import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")  # this workflow's advfine package

from advfine.job import snakemake_job
from advfine.stages import run_aggregate

with snakemake_job(snakemake):
    run_aggregate(list(snakemake.input.evals), snakemake.output.csv, snakemake.params.tables_dir,
                  snakemake.params.prune_sparsity, snakemake.params.ptq_bits)
