import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")  # this workflow's advfine package

from advfine.job import snakemake_job
from advfine.stages import run_quantization_aware_training

with snakemake_job(snakemake) as cfg:
    run_quantization_aware_training(
        cfg, snakemake.input.data, f"qat-int{snakemake.wildcards.bits}", snakemake.wildcards.train,
        int(snakemake.wildcards.seed), snakemake.input.get("model"), snakemake.input.get("metrics"),
        snakemake.output.model, snakemake.output.metrics, snakemake.threads)
