# Validation, wildcard constraints, path helpers and target lists.
import os
import sys

from snakemake.utils import validate

# The workflow imports its own advfine package from src/ (the job scripts do the same).
sys.path.insert(0, os.path.join(workflow.basedir, "src"))

from advfine.config import check_config, stage_config, ConfigError

validate(config, "../schemas/config.schema.yaml")
try:
    check_config(config)
except ConfigError as err:
    raise ValueError(str(err)) from None

EXPERIMENT = config["experiment"]
DATASET = config["data"]["name"]
ARCH = config["model"]["arch"]
SWEEP = config["sweep"]
DATA = "results/{experiment}/data/{dataset}.pt"
NODE = "results/{experiment}/{dataset}-{arch}/seed{seed}/base-{train}"
LOGS = "logs/{experiment}/{dataset}-{arch}/seed{seed}/base-{train}"


wildcard_constraints:
    experiment=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    dataset=r"[a-z_0-9]+",
    arch=r"[a-z_0-9]+",
    seed=r"\d+",
    train=r"st|rb",
    compression=r"dense|prune-[0-9.]+|ptq-int\d+",
    finetune=r"none|st|ad",


def compression_labels():
    return [f"prune-{s:g}" for s in SWEEP["prune_sparsities"]] + [
        f"ptq-int{b}" for b in SWEEP["ptq_bits"]
    ]


def parent_model(wildcards):
    """The checkpoint a fine-tuning job starts from: the compressed model, or the base model."""
    node = NODE.format(**wildcards)
    if wildcards.compression == "dense":
        return {"model": f"{node}/model.pt", "metrics": f"{node}/metrics.json"}
    return {
        "model": f"{node}/{wildcards.compression}/model.pt",
        "metrics": f"{node}/{wildcards.compression}/metrics.json",
    }


def evaluated_model(wildcards):
    """The checkpoint an evaluation measures (ft-none evaluates the parent itself)."""
    if wildcards.finetune == "none":
        return parent_model(wildcards)
    node = NODE.format(**wildcards)
    path = f"{node}/{wildcards.compression}/ft-{wildcards.finetune}"
    return {"model": f"{path}/model.pt", "metrics": f"{path}/metrics.json"}


def eval_targets():
    """Every eval.json of the sweep."""
    paths = []
    for seed in SWEEP["seeds"]:
        for train in SWEEP["base_models"]:
            node = NODE.format(
                experiment=EXPERIMENT, dataset=DATASET, arch=ARCH, seed=seed, train=train
            )
            paths.append(f"{node}/dense/ft-none/eval.json")
            if train == "st":
                paths += [f"{node}/dense/ft-{ft}/eval.json" for ft in SWEEP["dense_finetune"]]
            for comp in compression_labels():
                paths += [f"{node}/{comp}/ft-{ft}/eval.json" for ft in SWEEP["finetune"]]
    return paths


TABLES = ["table2_baselines", "table3_compressed", "table5_adversarial_finetuning"]
FIGURES = ["figure1_adversarial_finetuning", "figure3_no_finetuning"]


def table_targets():
    out = f"results/{EXPERIMENT}"
    return [f"{out}/all_metrics.csv"] + [
        f"{out}/tables/{t}.{ext}" for t in TABLES for ext in ("csv", "md")
    ]


def figure_targets():
    return [f"results/{EXPERIMENT}/figures/{f}.png" for f in FIGURES]
