import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")  # this workflow's advfine package

from advfine.job import snakemake_job
from advfine.stages import FIGURE2_MODELS, run_figure2

with snakemake_job(snakemake) as cfg:
    run_figure2(cfg, snakemake.input.data, {name: snakemake.input[name] for name in FIGURE2_MODELS},
                int(snakemake.params.seed), snakemake.output.png, snakemake.output.pdf,
                snakemake.output.embeddings, snakemake.threads)
