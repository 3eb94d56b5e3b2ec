"""The workflow's vocabulary, in one place: stage (rule) names, wildcard patterns, the compression-label
grammar, the paper's model notation (plain text and math), table and figure names, Figure 2's model
pairs and the seed offsets of the stages.

Pure Python, no torch or pandas: the Snakefile imports it at parse time, and every job parses the
workflow. The .smk files build their wildcard constraints, paths and target lists from it.
"""
from __future__ import annotations

import re

# The datasets, the attacks of the suite and the audit's checks are the core's names (advfine.core.catalog).
from advfine.core.catalog import ATTACKS, AUDIT_CHECKS, NUM_CLASSES, WHITE_BOX_ATTACKS  # noqa: F401

# ------------------------------------------------------------------------------ stages (rules)
# Each stage has one name end to end: rule <name> in workflow/rules/<name>.smk, script
# workflow/scripts/<name>.py, entry point advfine.stages.<name>.run, config slice
# config.STAGE_SECTIONS[<name>] and log file <name>.log.
STAGES = ("prepare_data", "train_base", "compress", "qat", "finetune", "evaluate", "deployment", "aggregate",
          "plot", "figure2")
# Stages that train, compress, attack or time models (a GPU helps the first three); the others are light (no GPU).
COMPUTE_STAGES = ("train_base", "compress", "qat", "finetune", "evaluate", "deployment", "figure2")
# Compute stages that run on the CPU whatever the config's device, and so ask for no GPU: ranking filters
# by their L1 norm and PTQ's few calibration batches take seconds, and a GPU job would hold a GPU idle;
# deployment times CPU inference.
CPU_STAGES = ("compress", "deployment")
# Stages that time models and so run alone: locally on every core Snakemake has (nothing runs beside
# them), on SLURM on a node of their own (sbatch --exclusive; workflow/rules/common.smk).
EXCLUSIVE_STAGES = ("deployment",)

# Each stage draws its random numbers from the node's seed plus its own offset, so fine-tuning,
# evaluation and QAT of one seed never reuse base training's stream.
SEED_OFFSETS = {"prepare_data": 0, "train_base": 0, "compress": 0, "qat": 3000, "finetune": 1000,
                "evaluate": 2000, "figure2": 0}


def stage_seed(stage: str, seed: int) -> int:
    """The seed ``stage`` draws from for a node of seed ``seed``."""
    return int(seed) + SEED_OFFSETS[stage]


# ------------------------------------------------------------------------------ models and nodes
BASE_MODELS = {"st": "standard training", "rb": "PGD adversarial training"}
FINETUNE_MODES = {"none": "no fine-tuning", "st": "standard fine-tuning", "ad": "adversarial fine-tuning"}
# Control arms beside T_ad (sweep.controls), each a node ft-<name> under a compressed model: other
# adversarial fine-tuning objectives at the same budget, and adversarial training of the compressed
# architecture from random initialization (advfine.core.objectives, stage finetune).
CONTROLS = {"fgsm": "FGSM-RS fine-tuning", "nfgsm": "N-FGSM fine-tuning", "trades": "TRADES fine-tuning",
            "fgsm-eqcost": "FGSM-RS fine-tuning for the compute of PGD fine-tuning",
            "nfgsm-eqcost": "N-FGSM fine-tuning for the compute of PGD fine-tuning",
            "scratch": "PGD training from random init, fine-tuning budget",
            "scratch-full": "PGD training from random init, base-training budget"}
SCRATCH_CONTROLS = ("scratch", "scratch-full")
# fine-tuning modes that train on attacked points
ADVERSARIAL_FINETUNING = ("ad", "fgsm", "nfgsm", "trades", "fgsm-eqcost", "nfgsm-eqcost")
EQUAL_COST_SUFFIX = "-eqcost"  # a single-step arm given as many epochs as PGD fine-tuning's compute buys

DENSE, PRUNE, PTQ, QAT = "dense", "prune", "ptq", "qat"
QUANTIZATION_METHODS = (PTQ, QAT)  # post-training quantization, quantization-aware training
COMPRESSION_METHODS = (DENSE, PRUNE, PTQ, QAT)

# Compression labels, the {compression} part of a node's path: dense, prune-0.8, ptq-int8, qat-int4.
PRUNE_LABEL = r"prune-[0-9.]+"
PTQ_LABEL = r"ptq-int\d+"
QAT_LABEL = r"qat-int\d+"
COMPRESSION_LABEL = "|".join((DENSE, PRUNE_LABEL, PTQ_LABEL, QAT_LABEL))
_COMPRESSION_RE = re.compile(rf"^(?:{COMPRESSION_LABEL})$")

# Wildcard constraints of every path below (Snakemake's wildcard_constraints).
WILDCARDS = {
    "experiment": r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    "dataset": r"[a-z_0-9]+",
    "arch": r"[a-z_0-9]+",
    "seed": r"\d+",
    "train": "|".join(BASE_MODELS),
    "compression": COMPRESSION_LABEL,
    "finetune": "|".join([*FINETUNE_MODES, *CONTROLS]),
    "bits": r"\d+",
}
# What each rule makes: compress the prune-* and ptq-int* nodes, qat the qat-int* ones, finetune st/ad.
COMPRESS_OUTPUTS = f"{PRUNE_LABEL}|{PTQ_LABEL}"
FINETUNE_OUTPUTS = "|".join([*(m for m in FINETUNE_MODES if m != "none"), *CONTROLS])
# The paths of a node (its folders, files and logs) are advfine.pipeline.nodes'.


def parse_compression(label: str) -> tuple[str, float | int | None]:
    """'dense' -> ('dense', None); 'prune-0.8' -> ('prune', 0.8); 'ptq-int8' -> ('ptq', 8);
    'qat-int4' -> ('qat', 4)."""
    if not _COMPRESSION_RE.match(label or ""):
        raise ValueError(f"unknown compression {label!r}; expected dense, prune-<sparsity>, ptq-int<bits> "
                         "or qat-int<bits>")
    if label == DENSE:
        return DENSE, None
    method, _, level = label.partition("-")
    if method == PRUNE:
        try:
            return PRUNE, float(level)
        except ValueError:  # the pattern allows "prune-1.2.3"
            raise ValueError(f"unknown compression {label!r}: {level!r} is not a number") from None
    return method, int(level[3:])


def compression_label(method: str, level: float | int | None = None) -> str:
    """The inverse of ``parse_compression``."""
    if method == DENSE:
        return DENSE
    if method == PRUNE:
        return f"{PRUNE}-{float(level):g}"
    if method in QUANTIZATION_METHODS:
        return f"{method}-int{int(level)}"
    raise ValueError(f"unknown compression method {method!r}; known: {COMPRESSION_METHODS}")


# ------------------------------------------------------------------------------ the paper's notation
def base_label(train: str, method: str = DENSE) -> str:
    """Paper notation of a (possibly compressed) base model: f_st, f_rb^p, f_st^q, ..."""
    sup = {DENSE: "", PRUNE: "^p", PTQ: "^q", QAT: "^q"}.get(method, f"^{method}")
    return f"f_{train}{sup}"


def model_label(train: str, method: str = DENSE, finetune: str = "none", quant_kind: bool = False) -> str:
    """Full label: ``T_ad(f_st^p)``; with ``quant_kind`` quantized models get " (PTQ)"/" (QAT)"."""
    label = base_label(train, method)
    if finetune in SCRATCH_CONTROLS:  # trained from random init: only the compressed architecture is f's
        budget = "full" if finetune == "scratch-full" else "ft"
        label = f"S_ad^{budget}(arch {base_label('', method).replace('f_', 'f')})"
    elif finetune != "none":
        label = f"T_{finetune}({label})"
    if quant_kind and method in QUANTIZATION_METHODS:
        label += f" ({method.upper()})"
    return label


_LABEL_RE = re.compile(r"^(?:T_(?P<ft>[a-z]+)\((?P<inner>[^()\s]+)\)|(?P<plain>[^()\s]+))"
                       r"(?P<kind> \((?:PTQ|QAT)\))?$")
_BASE_RE = re.compile(r"^f_(?P<train>[a-z]+)(?:\^(?P<sup>[a-z]+))?$")


def math_notation(label: str) -> str | None:
    """``T_ad(f_st^q) (PTQ)`` -> ``$\\mathcal{T}_{ad}(f_{st}^{q})$ (PTQ)``, valid LaTeX and matplotlib
    mathtext; None for a label that is not in the paper's notation."""
    m = _LABEL_RE.match(label)
    base = _BASE_RE.match((m.group("inner") or m.group("plain")) if m else "")
    if not (m and base):
        return None
    math_label = "f_{" + base.group("train") + "}"
    if base.group("sup"):
        math_label += "^{" + base.group("sup") + "}"
    if m.group("ft"):
        math_label = r"\mathcal{T}_{" + m.group("ft") + "}(" + math_label + ")"
    return f"${math_label}$" + (m.group("kind") or "")


def mathtext_label(label: str) -> str:
    """A model label for matplotlib: the paper's notation as mathtext (``math_notation``); any other label
    as plain text (its ``$`` escaped, so matplotlib does not read it as math)."""
    return math_notation(label) or label.replace("$", r"\$")


def math_model_label(train: str, method: str = DENSE, finetune: str = "none") -> str:
    """The label every figure gives a model: ``("st", "ptq", "ad")`` ->
    ``$\\mathcal{T}_{ad}(f_{st}^{q})$ (PTQ)`` (quantized models name their kind, PTQ or QAT)."""
    return mathtext_label(model_label(train, method, finetune, quant_kind=True))


def table5_models(prune_sparsity: float, ptq_bits: int) -> list[tuple[str, str, str]]:
    """(train, compression label, fine-tuning) of the models of Table 5 (6 on CIFAR-10) at the report's
    levels: the dense f_st and f_rb, and their adversarially fine-tuned pruned, PTQ and QAT versions.
    Their evaluations also measure a robustness curve (robust accuracy against eps)."""
    models = []
    for train in BASE_MODELS:
        models.append((train, DENSE, "none"))
        models += [(train, compression_label(method, level), "ad")
                   for method, level in ((PRUNE, prune_sparsity), (PTQ, ptq_bits), (QAT, ptq_bits))]
    return models


# ------------------------------------------------------------------------------ attacks
SAMPLES = "samples.csv"  # beside each eval.json: the per-sample outcome


# ------------------------------------------------------------------------------ tables and figures
TABLE_FORMATS = ["csv", "md", "tex", "html"]  # html: the version `snakemake --report` shows
FIGURE_FORMATS = ["png", "pdf"]
ALL_METRICS = "all_metrics.csv"
DEPLOYMENT = "deployment"  # results/<experiment>/deployment.json and .csv: every model's CPU inference cost
RESOLVED_CONFIG = "config.resolved.yaml"  # the config a run used (rule resolved_config)

TABLE2 = "table2_baselines"
COMPUTATIONAL_GAINS = "computational_gains"
COMPUTE = "compute"
EVALUATION_AUDIT = "evaluation_audit"
CONTROLS_TABLE = "controls"   # T_ad beside the control arms (sweep.controls)
CLAIMS_TABLE = "claims"       # the paper's claims decided by paired statistics
EFFICIENCY = "efficiency"     # every recipe's robustness, cost to obtain, speed-up and Pareto optimality
EFFICIENCY_STAGES = "efficiency_stages"  # the paper's 118 -> 14 -> 10 minutes as ratios of our stages


def table_names(dataset: str) -> list[str]:
    """File stems the aggregate stage writes for an experiment on ``dataset`` (each as .csv, .md, .tex).
    CIFAR-10 gets the paper's Tables 4 and 6, every other dataset Tables 3 and 5; ``compute`` is the
    per-model compute and memory table (not in the paper), ``efficiency`` and ``efficiency_stages`` the
    robustness-cost frontier's (not in the paper)."""
    compressed, finetuned = ((4, 6) if dataset == "cifar10" else (3, 5))  # controls, claims: not in the paper
    return [TABLE2, f"table{compressed}_compressed", f"table{finetuned}_adversarial_finetuning",
            COMPUTATIONAL_GAINS, COMPUTE, EVALUATION_AUDIT, CONTROLS_TABLE, EFFICIENCY, EFFICIENCY_STAGES,
            CLAIMS_TABLE]


FIGURE1 = "figure1_adversarial_finetuning"  # accuracy vs compression level after T_ad
FIGURE2 = "figure2_tsne"                    # t-SNE of features (stage figure2)
FIGURE3 = "figure3_no_finetuning"           # accuracy vs compression level without fine-tuning
FIGURE4 = "figure4_qat"                     # QAT of f_rb vs bit width
FIGURE5 = "figure5_robustness_curves"       # robust accuracy vs eps for the models of Table 5 (not in the paper)
FIGURE6 = "figure6_frontier"                # robust accuracy vs cost to obtain and deployed cost (not in the paper)
FIGURE2_EMBEDDINGS = "figure2_tsne_embeddings.csv"


def plot_figure_names(with_qat: bool) -> list[str]:
    """The figures the plot stage draws from all_metrics.csv (Figure 4 only when the sweep has QAT)."""
    return [FIGURE1, FIGURE3] + ([FIGURE4] if with_qat else []) + [FIGURE5, FIGURE6]


# Figure 2's three model pairs (rows), first seed, at the report's compression levels: each model is
# (train, compression method, fine-tuning); its name is the workflow's input name.
FIGURE2_MODELS = {
    "f_st": ("st", DENSE, "none"),
    "f_rb": ("rb", DENSE, "none"),
    "T_st_f_st_q": ("st", PTQ, "st"),
    "T_ad_f_st_q": ("st", PTQ, "ad"),
    "T_st_f_st_p": ("st", PRUNE, "st"),
    "T_ad_f_st_p": ("st", PRUNE, "ad"),
}
FIGURE2_PAIRS = (("f_st", "f_rb"), ("T_st_f_st_q", "T_ad_f_st_q"), ("T_st_f_st_p", "T_ad_f_st_p"))


def figure2_label(name: str) -> str:
    """The paper's label of a Figure 2 model: ``T_ad_f_st_q`` -> ``T_ad(f_st^q)``."""
    return model_label(*FIGURE2_MODELS[name])
