from advfine.pipeline.job import snakemake_job
from advfine.stages import qat

with snakemake_job(snakemake) as job:
    qat.run(job.config, data=snakemake.input.data, bits=int(snakemake.wildcards.bits),
            train=snakemake.wildcards.train, seed=job.seed, model=snakemake.input.get("model"),
            metrics=snakemake.input.get("metrics"), out_model=snakemake.output.model,
            out_metrics=snakemake.output.metrics, threads=job.threads)
