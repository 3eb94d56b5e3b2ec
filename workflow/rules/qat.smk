rule qat:
    """Quantization-aware training at one bit width: standard (base st) or adversarial (base rb), from the
    base model's weights or from scratch (qat.init)."""
    input:
        unpack(qat_input),
    output:
        **model_files(nodes.QAT_FOLDER),
    log:
        f"{nodes.QAT_LOGS}/qat.log",
    conda:
        "../../envs/advfine.yaml"
    threads: config["threads"]
    resources:
        **rule_resources("qat"),
    params:
        cfg=stage_config(config, "qat"),
        code=code_fingerprint("qat"),
    script:
        "../scripts/qat.py"
