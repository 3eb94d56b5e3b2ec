rule finetune:
    """Standard (st) or adversarial (ad) fine-tuning, starting from the parent's weights."""
    input:
        unpack(finetune_input),
        data=DATA,
    output:
        **model_files(f"{NODE}/{{compression}}/ft-{{finetune}}"),
    log:
        f"{LOGS}/{{compression}}/ft-{{finetune}}/finetune.log",
    wildcard_constraints:
        finetune=vocab.FINETUNE_OUTPUTS,
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
