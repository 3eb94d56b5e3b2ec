rule aggregate:
    """all_metrics.csv and the paper's tables (mean +- std over seeds) as CSV, Markdown and LaTeX:
    Tables 2, 3/4, 5/6 and the computational-gains table."""
    input:
        evals=eval_targets(),
    output:
        csv="results/{experiment}/all_metrics.csv",
        tables=expand(
            "results/{{experiment}}/tables/{table}.{ext}", table=TABLES, ext=TABLE_FORMATS
        ),
    params:
        tables_dir=lambda wildcards: f"results/{wildcards.experiment}/tables",
        prune_sparsity=config["report"]["prune_sparsity"],
        ptq_bits=config["report"]["ptq_bits"],
    log:
        "logs/{experiment}/aggregate.log",
    resources:
        **rule_resources("aggregate"),
    conda:
        "../../envs/advfine.yaml"
    script:
        "../scripts/aggregate.py"


rule plot:
    """The paper's Figures 1 (after adversarial fine-tuning), 3 (without) and 4 (QAT), PNG and PDF."""
    input:
        csv="results/{experiment}/all_metrics.csv",
    output:
        figures=expand(
            "results/{{experiment}}/figures/{figure}.{ext}", figure=FIGURES, ext=FIGURE_FORMATS
        ),
    params:
        figures_dir=lambda wildcards: f"results/{wildcards.experiment}/figures",
        figures=FIGURES,
    log:
        "logs/{experiment}/plot.log",
    resources:
        **rule_resources("plot"),
    conda:
        "../../envs/advfine.yaml"
    script:
        "../scripts/plot.py"


rule figure2_features:
    """Figure 2: t-SNE of the input and of layers 6-8, clean and PGD-attacked, for three model pairs."""
    input:
        unpack(figure2_models),
        data=lambda wildcards: DATA.format(experiment=wildcards.experiment, dataset=DATASET),
    output:
        png="results/{experiment}/figures/figure2_tsne.png",
        pdf="results/{experiment}/figures/figure2_tsne.pdf",
        embeddings="results/{experiment}/figure2_tsne_embeddings.csv",
    params:
        cfg=stage_config(config, "features"),
        seed=SWEEP["seeds"][0],
    log:
        "logs/{experiment}/figure2_features.log",
    threads: config["threads"]
    resources:
        **rule_resources("figure2_features"),
    conda:
        "../../envs/advfine.yaml"
    script:
        "../scripts/figure2_features.py"
