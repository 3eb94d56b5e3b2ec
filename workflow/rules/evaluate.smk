rule evaluate:
    """Clean and PGD robust accuracy, cost and provenance of one model."""
    input:
        unpack(evaluated_model),
        data=DATA,
    output:
        eval=f"{NODE}/{{compression}}/ft-{{finetune}}/eval.json",
    params:
        cfg=stage_config(config, "evaluate"),
    log:
        f"{LOGS}/{{compression}}/ft-{{finetune}}/evaluate.log",
    threads: config["threads"]
    resources:
        **rule_resources("evaluate"),
    conda:
        "../../envs/advfine.yaml"
    script:
        "../scripts/evaluate.py"
