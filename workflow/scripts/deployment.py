from advfine.pipeline.job import snakemake_job
from advfine.stages import deployment

with snakemake_job(snakemake) as job:
    deployment.run(job.config, data=snakemake.input.data, evals=list(snakemake.input.evals),
                   models=list(snakemake.input.models), out_json=snakemake.output.json,
                   out_csv=snakemake.output.csv, threads=job.threads)
