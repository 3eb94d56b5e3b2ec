rule finetune:
    """Standard (st) or adversarial (ad) fine-tuning, starting from the parent's weights."""
    input:
        unpack(parent_model),
        data=DATA,
    output:
        model=f"{NODE}/{{compression}}/ft-{{finetune}}/model.pt",
        metrics=f"{NODE}/{{compression}}/ft-{{finetune}}/metrics.json",
    wildcard_constraints:
        finetune=r"st|ad",
    params:
        cfg=stage_config(config, "finetune"),
    log:
        f"{LOGS}/{{compression}}/ft-{{finetune}}/finetune.log",
    threads: config["threads"]
    resources:
        **rule_resources("finetune"),
    conda:
        "../../envs/advfine.yaml"
    script:
        "../scripts/finetune.py"
