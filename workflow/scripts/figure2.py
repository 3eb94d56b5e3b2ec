from advfine.pipeline.job import snakemake_job
from advfine.pipeline.vocab import FIGURE2_MODELS
from advfine.stages import figure2

with snakemake_job(snakemake) as job:
    figure2.run(job.config, data=snakemake.input.data,
                models={name: snakemake.input[name] for name in FIGURE2_MODELS}, seed=int(snakemake.params.seed),
                out_png=snakemake.output.png, out_pdf=snakemake.output.pdf,
                out_embeddings=snakemake.output.embeddings, threads=job.threads)
