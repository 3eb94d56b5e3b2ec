rule compress:
    """L1-norm filter pruning (filters removed) or post-training quantization of a base model."""
    input:
        **model_files(nodes.BASE_FOLDER),
        data=DATA,
    output:
        **model_files(nodes.COMPRESSED_FOLDER),
    log:
        f"{nodes.COMPRESSED_LOGS}/compress.log",
    wildcard_constraints:
        compression=vocab.COMPRESS_OUTPUTS,
    group:
        "short"
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
