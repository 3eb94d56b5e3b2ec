rule compress:
    """L1-norm filter pruning (filters removed) or post-training quantization of a base model."""
    input:
        **model_files(NODE),
        data=DATA,
    output:
        **model_files(f"{NODE}/{{compression}}"),
    log:
        f"{LOGS}/{{compression}}/compress.log",
    wildcard_constraints:
        compression=vocab.COMPRESS_OUTPUTS,
    conda:
        "../../envs/advfine.yaml"
    threads: config["threads"]
    resources:
        **rule_resources("compress"),
    params:
        cfg=stage_config(config, "compress"),
        code=code_fingerprint("compress"),
    script:
        "../scripts/compress.py"
