rule figure2:
    """Figure 2: t-SNE of the input and of layers 6-8, clean and PGD-attacked, for three model pairs."""
    input:
        unpack(figure2_input),
    output:
        png=in_report(
            f"results/{{experiment}}/figures/{vocab.FIGURE2}.png",
            vocab.FIGURE2,
            "Figures",
        ),
        pdf=f"results/{{experiment}}/figures/{vocab.FIGURE2}.pdf",
        embeddings=f"results/{{experiment}}/{vocab.FIGURE2_EMBEDDINGS}",
    log:
        "logs/{experiment}/figure2.log",
    conda:
        "../../envs/advfine.yaml"
    threads: config["threads"]
    resources:
        **rule_resources("figure2"),
    params:
        cfg=stage_config(config, "figure2"),
        code=code_fingerprint("figure2"),
        seed=SWEEP["seeds"][0],
    script:
        "../scripts/figure2.py"
