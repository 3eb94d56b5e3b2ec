from advfine.pipeline.job import snakemake_job
from advfine.stages import plot

with snakemake_job(snakemake) as job:
    plot.run(job.config, metrics_csv=snakemake.input.csv, out_dir=snakemake.params.figures_dir,
             figures=list(snakemake.params.figures))
