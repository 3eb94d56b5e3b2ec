from advfine.pipeline.job import snakemake_job
from advfine.stages import aggregate

with snakemake_job(snakemake) as job:
    aggregate.run(job.config, evals=list(snakemake.input.evals),
                  deployment=snakemake.input.deployment, out_csv=snakemake.output.csv,
                  out_tables_dir=snakemake.params.tables_dir)
