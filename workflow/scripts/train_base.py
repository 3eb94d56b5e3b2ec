from advfine.pipeline.job import snakemake_job
from advfine.stages import train_base

with snakemake_job(snakemake) as job:
    train_base.run(job.config, data=snakemake.input.data, train=snakemake.wildcards.train, seed=job.seed,
                   out_model=snakemake.output.model, out_metrics=snakemake.output.metrics, threads=job.threads)
