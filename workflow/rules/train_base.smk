rule train_base:
    """Train the base model: standard (st) or PGD adversarial (rb)."""
    input:
        unpack(train_base_input),
    output:
        **model_files(nodes.BASE_FOLDER),
    log:
        f"{nodes.BASE_LOGS}/train_base.log",
    conda:
        "../../envs/advfine.yaml"
    threads: config["threads"]
    resources:
        **rule_resources("train_base"),
    params:
        cfg=stage_config(config, "train_base"),
        code=code_fingerprint("train_base"),
    script:
        "../scripts/train_base.py"
