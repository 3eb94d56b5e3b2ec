rule deployment:
    """CPU inference cost of every evaluated model (latency, throughput, size), in one job that runs
    alone: locally it holds every core Snakemake has, so Snakemake starts no job beside it; on SLURM
    it asks for a node of its own (resources slurm_extra: --exclusive). Torch times with
    deployment.threads threads whatever cores the job holds."""
    input:
        data=DATA.format(experiment=EXPERIMENT, dataset=DATASET),
        evals=eval_targets(),
        models=model_targets(),
    output:
        json=f"results/{{experiment}}/{vocab.DEPLOYMENT}.json",
        csv=f"results/{{experiment}}/{vocab.DEPLOYMENT}.csv",
    log:
        "logs/{experiment}/deployment.log",
    conda:
        "../../envs/advfine.yaml"
    threads: exclusive_threads()
    resources:
        **rule_resources("deployment"),
    params:
        cfg=stage_config(config, "deployment"),
        code=code_fingerprint("deployment"),
    script:
        "../scripts/deployment.py"
