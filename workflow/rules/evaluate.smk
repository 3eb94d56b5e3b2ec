rule evaluate:
    """Clean and PGD robust accuracy, cost and provenance of one model."""
    input:
        unpack(evaluate_input),
        data=DATA,
    output:
        eval=f"{NODE}/{{compression}}/ft-{{finetune}}/eval.json",
        samples=f"{NODE}/{{compression}}/ft-{{finetune}}/{vocab.SAMPLES}",
    log:
        f"{LOGS}/{{compression}}/ft-{{finetune}}/evaluate.log",
    conda:
        "../../envs/advfine.yaml"
    threads: config["threads"]
    resources:
        **rule_resources("evaluate"),
    params:
        cfg=stage_config(config, "evaluate"),
        code=code_fingerprint("evaluate"),
        curve=is_table5_model,
    script:
        "../scripts/evaluate.py"
