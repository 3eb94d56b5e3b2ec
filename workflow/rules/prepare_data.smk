rule prepare_data:
    """Load, split and preprocess the dataset once; every other job reads this tensor file."""
    output:
        data=DATA,
    log:
        "logs/{experiment}/{dataset}/prepare_data.log",
    conda:
        "../../envs/advfine.yaml"
    resources:
        **rule_resources("prepare_data"),
    params:
        cfg=stage_config(config, "prepare_data"),
        code=code_fingerprint("prepare_data"),
    script:
        "../scripts/prepare_data.py"
