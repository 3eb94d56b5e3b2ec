rule evaluate:
    """Clean and PGD robust accuracy, cost and provenance of one model."""
    input:
        unpack(evaluate_input),
        data=DATA,
    output:
        eval=f"{NODE}/{{compression}}/ft-{{finetune}}/eval.json",
    log:
        f"{LOGS}/{{compression}}/ft-{{finetune}}/evaluate.log",
    conda:
        "../../envs/advfine.yaml"
    threads: config["threads"]
    resources:
        **rule_resources("evaluate"),
    params:
        cfg=stage_config(config, "evaluate"),
    script:
        "../scripts/evaluate.py"
