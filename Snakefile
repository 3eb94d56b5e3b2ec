# advfine: adversarial fine-tuning of compressed networks.
#   snakemake all --cores 2                    # tables and figures of config.yaml
#   snakemake all_tables --cores 2 --configfile=configs/X.yaml   # the target first: options take several values
#   snakemake --report report.html             # after a run: figures and tables in one HTML file
# One stage = one name: rule <name>, workflow/rules/<name>.smk, workflow/scripts/<name>.py,
# advfine.stages.<name>.run, its config slice <name> (advfine.config.STAGE_SECTIONS) and <name>.log.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/prepare_data.smk"
include: "workflow/rules/train_base.smk"
include: "workflow/rules/compress.smk"
include: "workflow/rules/qat.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/plot.smk"
include: "workflow/rules/figure2.smk"


# Target rules run nothing: never submit them to a cluster.
localrules:
    all,
    all_tables,
    all_figures,


rule all:
    default_target: True
    input:
        table_targets(),
        figure_targets(),


rule all_tables:
    input:
        table_targets(),


rule all_figures:
    input:
        figure_targets(),


# Loud at the end of a run, finished or failed: every collapsed or diverged model and the nodes built on it.
onsuccess:
    from advfine.health import announce_health

    announce_health(RESULTS)


onerror:
    from advfine.health import announce_health

    announce_health(RESULTS)
