rule aggregate:
    """all_metrics.csv and the paper's Tables 2, 3 and 5 (mean +- std over seeds)."""
    input:
        evals=eval_targets(),
    output:
        csv="results/{experiment}/all_metrics.csv",
        tables=expand(
            "results/{{experiment}}/tables/{table}.{ext}", table=TABLES, ext=["csv", "md"]
        ),
    params:
        tables_dir=lambda wildcards: f"results/{wildcards.experiment}/tables",
        prune_sparsity=config["report"]["prune_sparsity"],
        ptq_bits=config["report"]["ptq_bits"],
    log:
        "logs/{experiment}/aggregate.log",
    conda:
        "../../envs/advfine.yaml"
    script:
        "../scripts/aggregate.py"


rule plot:
    """The paper's Figure 1 (after adversarial fine-tuning) and Figure 3 (without)."""
    input:
        csv="results/{experiment}/all_metrics.csv",
    output:
        figure1="results/{experiment}/figures/figure1_adversarial_finetuning.png",
        figure3="results/{experiment}/figures/figure3_no_finetuning.png",
    log:
        "logs/{experiment}/plot.log",
    conda:
        "../../envs/advfine.yaml"
    script:
        "../scripts/plot.py"
