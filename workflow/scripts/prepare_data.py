from advfine.pipeline.job import snakemake_job
from advfine.stages import prepare_data

with snakemake_job(snakemake) as job:
    prepare_data.run(job.config, out_data=snakemake.output.data)
