rule evaluate:
    """Clean and PGD robust accuracy, cost and provenance of one model."""
    input:
        unpack(evaluate_input),
        data=DATA,
    output:
        eval=f"{nodes.FINETUNED_FOLDER}/{nodes.EVAL}",
        samples=f"{nodes.FINETUNED_FOLDER}/{vocab.SAMPLES}",
    log:
        f"{nodes.FINETUNED_LOGS}/evaluate.log",
    group:
        "short"
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
