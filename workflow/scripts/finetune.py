from advfine.pipeline.job import snakemake_job
from advfine.stages import finetune

with snakemake_job(snakemake) as job:
    finetune.run(job.config, data=snakemake.input.data, compression=snakemake.wildcards.compression,
                 mode=snakemake.wildcards.finetune, seed=job.seed, model=snakemake.input.model,
                 metrics=snakemake.input.metrics, out_model=snakemake.output.model,
                 out_metrics=snakemake.output.metrics, threads=job.threads)
