rule compress:
    """L1-norm filter pruning (filters removed) or post-training quantization of a base model."""
    input:
        data=DATA,
        model=f"{NODE}/model.pt",
        metrics=f"{NODE}/metrics.json",
    output:
        model=f"{NODE}/{{compression}}/model.pt",
        metrics=f"{NODE}/{{compression}}/metrics.json",
    wildcard_constraints:
        compression=r"prune-[0-9.]+|ptq-int\d+",
    params:
        cfg=stage_config(config, "compress"),
    log:
        f"{LOGS}/{{compression}}/compress.log",
    threads: config["threads"]
    resources:
        **rule_resources("compress"),
    conda:
        "../../envs/advfine.yaml"
    script:
        "../scripts/compress.py"


rule quantization_aware_training:
    """QAT at one bit width: standard (base st) or adversarial (base rb), from the base model's
    weights or from scratch (compress.qat.init)."""
    input:
        unpack(qat_input),
    output:
        model=f"{NODE}/qat-int{{bits}}/model.pt",
        metrics=f"{NODE}/qat-int{{bits}}/metrics.json",
    wildcard_constraints:
        bits=r"\d+",
    params:
        cfg=stage_config(config, "qat"),
    log:
        f"{LOGS}/qat-int{{bits}}/qat.log",
    threads: config["threads"]
    resources:
        **rule_resources("quantization_aware_training"),
    conda:
        "../../envs/advfine.yaml"
    script:
        "../scripts/quantization_aware_training.py"
