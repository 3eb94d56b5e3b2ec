# advfine: adversarial fine-tuning of compressed networks.
#   snakemake all --cores 2                    # tables and figures of config.yaml
#   snakemake all_tables --cores 2 --configfile=configs/X.yaml   # the target first: options take several values
#   snakemake --report report.html             # after a run: figures and tables in one HTML file
# The config: config.yaml without --configfile; else the files given, each complete or an overlay of the
# base it names (extends:); see workflow/rules/common.smk. What a run used: results/<experiment>/
# config.resolved.yaml. One stage = one name: rule <name>, workflow/rules/<name>.smk,
# workflow/scripts/<name>.py, advfine.stages.<name>.run, its config slice <name>
# (advfine.pipeline.config.STAGE_SECTIONS) and <name>.log.
from snakemake.utils import min_version

min_version("9.0")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/prepare_data.smk"
include: "workflow/rules/train_base.smk"
include: "workflow/rules/compress.smk"
include: "workflow/rules/qat.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/deployment.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/plot.smk"
include: "workflow/rules/figure2.smk"


# Target rules run nothing, resolved_config writes one small file: never submit them to a cluster.
localrules:
    all,
    all_tables,
    all_figures,
    resolved_config,


rule resolved_config:
    """The config every stage got (files, overrides, schema defaults), beside the run's results."""
    output:
        RESOLVED,
    log:
        f"logs/{EXPERIMENT}/resolved_config.log",
    params:
        cfg=config,
    run:
        write_resolved_config(params.cfg, output[0])


rule all:
    default_target: True
    input:
        RESOLVED,
        table_targets(),
        figure_targets(),


rule all_tables:
    input:
        RESOLVED,
        table_targets(),


rule all_figures:
    input:
        RESOLVED,
        figure_targets(),


# Loud at the end of a run, finished or failed: every collapsed or diverged model and the nodes built on it.
onsuccess:
    from advfine.pipeline.run_health import announce_health

    announce_health(RESULTS)


onerror:
    from advfine.pipeline.run_health import announce_health

    announce_health(RESULTS)
