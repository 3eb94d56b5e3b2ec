# advfine: adversarial fine-tuning of compressed networks.
#   snakemake --cores 2 all                    # tables and figures of config.yaml
#   snakemake --cores 2 --configfile=configs/X.yaml all_tables   # "=": --configfile takes several files
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/compress.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


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
