rule prepare_data:
    """Load, split and preprocess the dataset once; every other job reads this tensor file."""
    output:
        data=DATA,
    params:
        cfg=stage_config(config, "prepare_data"),
    log:
        "logs/{experiment}/prepare_data_{dataset}.log",
    resources:
        **rule_resources("prepare_data"),
    conda:
        "../../envs/advfine.yaml"
    script:
        "../scripts/prepare_data.py"


rule train_base:
    """Train the base model: standard (st) or PGD adversarial (rb)."""
    input:
        unpack(base_model_input),
    output:
        model=f"{NODE}/model.pt",
        metrics=f"{NODE}/metrics.json",
    params:
        cfg=stage_config(config, "train_base"),
    log:
        f"{LOGS}/train_base.log",
    threads: config["threads"]
    resources:
        **rule_resources("train_base"),
    conda:
        "../../envs/advfine.yaml"
    script:
        "../scripts/train_base.py"
