rule aggregate:
    """all_metrics.csv and the paper's tables (mean +- std over seeds) as CSV, Markdown, LaTeX and HTML:
    Tables 2, 3/4, 5/6, the computational-gains, compute, audit, controls, efficiency (the robustness-cost
    frontier) and claims tables (the claims table reads the per-sample outcomes), with every model's
    inference cost from the deployment rule.
    """
    input:
        evals=eval_targets(),
        samples=sample_targets(),
        deployment=f"results/{{experiment}}/{vocab.DEPLOYMENT}.json",
    output:
        csv=in_report(
            f"results/{{experiment}}/{vocab.ALL_METRICS}", "all_metrics", "Metrics"
        ),
        tables=table_outputs(),
    log:
        "logs/{experiment}/aggregate.log",
    conda:
        "../../envs/advfine.yaml"
    resources:
        **rule_resources("aggregate"),
    params:
        cfg=stage_config(config, "aggregate"),
        code=code_fingerprint("aggregate"),
        tables_dir=lambda wildcards: f"results/{wildcards.experiment}/tables",
    script:
        "../scripts/aggregate.py"
