from advfine.pipeline.job import snakemake_job
from advfine.stages import evaluate

with snakemake_job(snakemake) as job:
    evaluate.run(job.config, data=snakemake.input.data, experiment=snakemake.wildcards.experiment,
                 train=snakemake.wildcards.train, compression=snakemake.wildcards.compression,
                 finetune=snakemake.wildcards.finetune, seed=job.seed, model=snakemake.input.model,
                 metrics=snakemake.input.metrics, out_eval=snakemake.output.eval,
                 out_samples=snakemake.output.samples, curve=bool(snakemake.params.curve), threads=job.threads)
