from advfine.job import snakemake_job
from advfine.stages import run_evaluate

w = snakemake.wildcards
with snakemake_job(snakemake) as cfg:
    run_evaluate(cfg, w.experiment, w.train, w.compression, w.finetune, int(w.seed),
                 snakemake.input.model, snakemake.input.metrics, snakemake.output.eval, snakemake.threads)
