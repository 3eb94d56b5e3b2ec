# Validation, wildcard constraints, path helpers and target lists.
import os
import sys

from snakemake.utils import validate

# The workflow imports its own advfine package from src/ (the job scripts do the same).
sys.path.insert(0, os.path.join(workflow.basedir, "src"))

from advfine.config import check_config, stage_config, ConfigError
from advfine.outputs import FIGURE_FORMATS, TABLE_FORMATS, table_names

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
    compression=r"dense|prune-[0-9.]+|(ptq|qat)-int\d+",
    finetune=r"none|st|ad",


# The rules that train, compress, fine-tune or attack models; the others (prepare_data, aggregate,
# plot) are light and take no GPU.
COMPUTE_RULES = {"train_base", "compress", "quantization_aware_training", "finetune", "evaluate",
                 "figure2_features"}
DEFAULT_RESOURCES = {"compute": {"gpu": 1}, "light": {"gpu": 0}}


def rule_resources(rule_name):
    """Snakemake resources of ``rule_name`` from config key ``resources``: its group (compute or light),
    then the rule's own overrides under ``resources.rules``."""
    res = config.get("resources", {})
    group = "compute" if rule_name in COMPUTE_RULES else "light"
    merged = dict(DEFAULT_RESOURCES[group])
    merged.update(res.get(group, {}))
    merged.update(res.get("rules", {}).get(rule_name, {}))
    return merged


def compression_labels(train):
    """The compressed nodes under base model ``train``; QAT only under sweep.qat_base_models."""
    labels = [f"prune-{s:g}" for s in SWEEP["prune_sparsities"]]
    labels += [f"ptq-int{b}" for b in SWEEP["ptq_bits"]]
    if train in SWEEP.get("qat_base_models", ["rb"]):
        labels += [f"qat-int{b}" for b in SWEEP.get("qat_bits", [])]
    return labels


def base_model_input(wildcards):
    """train_base reads the prepared data, and a user's pretrained checkpoint when one is set."""
    inputs = {"data": DATA.format(**wildcards)}
    if config["model"].get("pretrained"):
        inputs["pretrained"] = config["model"]["pretrained"]
    return inputs


def qat_input(wildcards):
    """QAT from the trained base model reads it; QAT from scratch needs only the data."""
    inputs = {"data": DATA.format(**wildcards)}
    if config["compress"]["qat"]["init"] == "parent":
        node = NODE.format(**wildcards)
        inputs.update(model=f"{node}/model.pt", metrics=f"{node}/metrics.json")
    return inputs


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
            for comp in compression_labels(train):
                paths += [f"{node}/{comp}/ft-{ft}/eval.json" for ft in SWEEP["finetune"]]
    return paths


TABLES = table_names(DATASET)
FIGURE2 = config["report"].get("figure2", {"enabled": False})
FIGURES = ["figure1_adversarial_finetuning", "figure3_no_finetuning"]
if SWEEP.get("qat_bits"):
    FIGURES.append("figure4_qat")


def table_targets():
    out = f"results/{EXPERIMENT}"
    return [f"{out}/all_metrics.csv"] + [
        f"{out}/tables/{t}.{ext}" for t in TABLES for ext in TABLE_FORMATS
    ]


def figure_targets():
    out = f"results/{EXPERIMENT}/figures"
    targets = [f"{out}/{f}.{ext}" for f in FIGURES for ext in FIGURE_FORMATS]
    if FIGURE2["enabled"]:
        targets += [f"{out}/figure2_tsne.{ext}" for ext in FIGURE_FORMATS]
    return targets


def figure2_models(wildcards):
    """The three model pairs of Figure 2, for the first seed: (f_st, f_rb),
    (T_st(f_st^q), T_ad(f_st^q)) and (T_st(f_st^p), T_ad(f_st^p)) at the report levels."""
    seed = SWEEP["seeds"][0]
    node = {
        t: NODE.format(experiment=wildcards.experiment, dataset=DATASET, arch=ARCH, seed=seed, train=t)
        for t in ("st", "rb")
    }
    prune = f"prune-{config['report']['prune_sparsity']:g}"
    ptq = f"ptq-int{config['report']['ptq_bits']}"
    return {
        "f_st": f"{node['st']}/model.pt",
        "f_rb": f"{node['rb']}/model.pt",
        "T_st_f_st_q": f"{node['st']}/{ptq}/ft-st/model.pt",
        "T_ad_f_st_q": f"{node['st']}/{ptq}/ft-ad/model.pt",
        "T_st_f_st_p": f"{node['st']}/{prune}/ft-st/model.pt",
        "T_ad_f_st_p": f"{node['st']}/{prune}/ft-ad/model.pt",
    }
