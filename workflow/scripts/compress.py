from advfine.pipeline.job import snakemake_job
from advfine.stages import compress

with snakemake_job(snakemake) as job:
    compress.run(job.config, data=snakemake.input.data, compression=snakemake.wildcards.compression, seed=job.seed,
                 model=snakemake.input.model, metrics=snakemake.input.metrics,
                 out_model=snakemake.output.model, out_metrics=snakemake.output.metrics, threads=job.threads)
