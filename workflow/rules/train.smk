rule train_base:
    """Train the base model: standard (st) or PGD adversarial (rb)."""
    output:
        model=f"{NODE}/model.pt",
        metrics=f"{NODE}/metrics.json",
    params:
        cfg=stage_config(config, "train_base"),
    log:
        f"{LOGS}/train_base.log",
    threads: config["threads"]
    resources:
        gpu=1,
    conda:
        "../../envs/advfine.yaml"
    script:
        "../scripts/train_base.py"
