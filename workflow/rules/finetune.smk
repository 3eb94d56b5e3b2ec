rule finetune:
    """Standard (st) or adversarial (ad) fine-tuning, starting from the parent's weights."""
    input:
        unpack(finetune_input),
        data=DATA,
    output:
        **model_files(nodes.FINETUNED_FOLDER),
    log:
        f"{nodes.FINETUNED_LOGS}/finetune.log",
    wildcard_constraints:
        finetune=vocab.FINETUNE_OUTPUTS,
    group:
        "short"
    conda:
        "../../envs/advfine.yaml"
    threads: config["threads"]
    resources:
        **rule_resources("finetune"),
    params:
        cfg=stage_config(config, "finetune"),
        code=code_fingerprint("finetune"),
    script:
        "../scripts/finetune.py"
