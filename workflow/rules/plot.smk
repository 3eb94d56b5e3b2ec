rule plot:
    """The paper's Figures 1 (after adversarial fine-tuning), 3 (without) and 4 (QAT), our Figures 5
    (robustness curves) and 6 (the robustness-cost frontier), PNG and PDF."""
    input:
        csv=f"results/{{experiment}}/{vocab.ALL_METRICS}",
    output:
        png=[
            in_report(f"results/{{experiment}}/figures/{f}.png", f, "Figures")
            for f in FIGURES
        ],
        pdf=[f"results/{{experiment}}/figures/{f}.pdf" for f in FIGURES],
    log:
        "logs/{experiment}/plot.log",
    conda:
        "../../envs/advfine.yaml"
    resources:
        **rule_resources("plot"),
    params:
        cfg=stage_config(config, "plot"),
        code=code_fingerprint("plot"),
        figures_dir=lambda wildcards: f"results/{wildcards.experiment}/figures",
        figures=FIGURES,
    script:
        "../scripts/plot.py"
