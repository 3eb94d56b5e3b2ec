import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")  # this workflow's advfine package

from advfine.job import snakemake_job
from advfine.stages import run_evaluate

w = snakemake.wildcards
with snakemake_job(snakemake) as cfg:
    run_evaluate(cfg, snakemake.input.data, w.experiment, w.train, w.compression, w.finetune, int(w.seed),
                 snakemake.input.model, snakemake.input.metrics, snakemake.output.eval, snakemake.threads)
