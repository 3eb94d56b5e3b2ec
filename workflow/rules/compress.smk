rule compress:
    """L1-norm filter pruning (filters removed) or post-training quantization of a base model."""
    input:
        data=DATA,
        model=f"{NODE}/model.pt",
        metrics=f"{NODE}/metrics.json",
    output:
        model=f"{NODE}/{{compression}}/model.pt",
        metrics=f"{NODE}/{{compression}}/metrics.json",
    wildcard_constraints:
        compression=r"prune-[0-9.]+|ptq-int\d+",
    params:
        cfg=stage_config(config, "compress"),
    log:
        f"{LOGS}/{{compression}}/compress.log",
    threads: config["threads"]
    resources:
        gpu=1,
    conda:
        "../../envs/advfine.yaml"
    script:
        "../scripts/compress.py"
