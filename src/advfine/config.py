"""The experiment config: validation against ``workflow/schemas/config.schema.yaml`` (which holds every
default: validation fills them in, so code reads keys without defaults of its own), the checks the
schema cannot express, and the slice of the config each stage reads.

Each stage gets only the sections it uses (``stage_config``); the workflow passes that slice as the
rule's Snakemake params, so changing a setting reruns exactly the stages that read it, and adding a
seed or a compression level to ``sweep`` reruns nothing that exists. Every leaf key of the schema
reaches some stage's slice or is one of ``WORKFLOW_KEYS`` (tests/test_config.py walks the schema).
No torch import: the Snakefile uses this module at parse time."""
from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import yaml

from .vocab import ATTACKS

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"

# The config each stage reads, as dotted paths (a section, or one key of it); keys are the stage names.
STAGE_SECTIONS = {
    "prepare_data": ("data",),
    "train_base": ("model", "precision", "deterministic", "attack.eps_space", "attack.norm", "attack.train",
                   "train", "adversarial"),
    "compress": ("deterministic", "compress"),
    "qat": ("model", "deterministic", "attack.eps_space", "attack.norm", "attack.train", "compress", "qat"),
    # train and compress: the from-scratch controls' full budget and the quantized ones' calibration
    "finetune": ("model", "precision", "deterministic", "attack.eps_space", "attack.norm", "attack.train",
                 "finetune", "adversarial", "train", "compress"),
    "evaluate": ("precision", "deterministic", "attack.eps_space", "attack.norm", "attack.eval", "evaluate",
                 "compress"),  # compress: the PTQ calibration batches, reused by the INT8 export
    "aggregate": ("report",),
    "plot": (),
    "figure2": ("deterministic", "attack.eps_space", "attack.norm", "attack.eval", "figure2"),
}

# Top-level keys the workflow itself consumes instead of a stage's params, and how.
WORKFLOW_KEYS = {
    "experiment": "the results folder results/{experiment}/, a wildcard of every path",
    "device": "read by every job when it starts (advfine.job); not a param, so where a result was "
              "computed is recorded in it (provenance) but is not part of its identity",
    "threads": "every model rule's threads",
    "resources": "every rule's resources (GPUs, memory, runtime, SLURM partition)",
    "sweep": "the nodes of the DAG (seeds, base models, compression levels, fine-tuning modes)",
}

# Keys that moved (when every stage got one name) or were replaced: the old place -> what to do.
MOVED_KEYS = {
    ("compress", "qat"): "moved to qat (each stage's settings are under its own name); move the section there",
    ("report", "figure2"): "moved to figure2 (each stage's settings are under its own name); move the section there",
    ("resources", "rules", "quantization_aware_training"): "moved to resources.rules.qat (the rule's name)",
    ("resources", "rules", "figure2_features"): "moved to resources.rules.figure2 (the rule's name)",
    ("evaluate", "transfer_attack_for_quantized"): "replaced by the attack 'transfer' in evaluate.attacks",
}


class ConfigError(ValueError):
    """A config value is wrong; the message names the key."""


def _with_defaults(validator_class):
    """A validator that fills in each property's ``default`` before validating it (the recipe of
    jsonschema's FAQ, as snakemake.utils.validate does; ours reports the failing key by name)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultsValidator = _with_defaults(jsonschema.Draft202012Validator)


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def validate_config(config: dict) -> dict:
    """Check ``config`` against the schema, fill in the schema's defaults (in place) and run the
    cross-field checks; returns ``config``. Raises ConfigError naming the first bad key."""
    for old, new in MOVED_KEYS.items():
        node = config
        for part in old:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            raise ConfigError(f"config key {'.'.join(old)}: {new}")
    errors = sorted(_DefaultsValidator(load_schema()).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ConfigError(f"config key {key}: {err.message}")
    check_config(config)
    return config


def section_with_defaults(section: str, values: dict) -> dict:
    """One top-level section of the config (e.g. ``train``, ``data``), checked against its part of the
    schema and completed with its defaults: for code that calls the package without a whole config
    (tests, benchmarks). Raises ConfigError naming the bad key."""
    schema = load_schema()
    if section not in schema["properties"]:
        raise ConfigError(f"config key {section}: not a section of the config")
    partial = {"$schema": schema["$schema"], "$defs": schema["$defs"], "type": "object",
               "properties": {section: schema["properties"][section]}}
    instance = {section: copy.deepcopy(values)}
    errors = sorted(_DefaultsValidator(partial).iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        key = ".".join(str(p) for p in errors[0].absolute_path)
        raise ConfigError(f"config key {key}: {errors[0].message}")
    return instance[section]


def check_config(config: dict) -> None:
    """Checks the schema cannot express (on a config whose defaults are filled in)."""
    sweep, report = config["sweep"], config["report"]
    if sweep["prune_sparsities"] and report["prune_sparsity"] not in sweep["prune_sparsities"]:
        raise ConfigError(f"config key report.prune_sparsity: {report['prune_sparsity']} is not in "
                          f"sweep.prune_sparsities {sweep['prune_sparsities']}")
    if sweep["ptq_bits"] and report["ptq_bits"] not in sweep["ptq_bits"]:
        raise ConfigError(f"config key report.ptq_bits: {report['ptq_bits']} is not in "
                          f"sweep.ptq_bits {sweep['ptq_bits']}")
    if sweep["dense_finetune"] and "st" not in sweep["base_models"]:
        raise ConfigError("config key sweep.dense_finetune: fine-tunes the standard model, "
                          "so sweep.base_models must contain 'st'")
    if sweep["qat_bits"] and "qat" not in config:
        raise ConfigError("config key qat: missing; sweep.qat_bits needs the QAT training settings")
    if sweep["qat_bits"] and set(sweep["finetune"]) - {"none"} and "qat" not in config["finetune"]:
        raise ConfigError("config key finetune.qat: missing; fine-tuning QAT models (sweep.qat_bits with "
                          "sweep.finetune st/ad) needs its lr and momentum")
    if config["figure2"]["enabled"]:
        needs = {"model.arch": (config["model"]["arch"] == "cnn8", "cnn8 (layers 6-8 of the paper's CNN)"),
                 "sweep.base_models": ("st" in sweep["base_models"] and "rb" in sweep["base_models"], "st and rb"),
                 "sweep.finetune": ({"st", "ad"} <= set(sweep["finetune"]), "st and ad"),
                 "sweep.prune_sparsities": (bool(sweep["prune_sparsities"]), "report.prune_sparsity"),
                 "sweep.ptq_bits": (bool(sweep["ptq_bits"]), "report.ptq_bits")}
        for key, (ok, what) in needs.items():
            if not ok:
                raise ConfigError(f"config key figure2.enabled: Figure 2 needs {key} to contain {what}; "
                                  "set figure2.enabled: false or extend the sweep")
    if len({f"{s:g}" for s in sweep["prune_sparsities"]}) != len(sweep["prune_sparsities"]):
        raise ConfigError("config key sweep.prune_sparsities: two values give the same folder name")
    attacks = config["evaluate"]["attacks"]
    order = ATTACKS
    if attacks[0] != "pgd" or attacks != sorted(attacks, key=order.index):
        raise ConfigError(f"config key evaluate.attacks: {attacks}: the suite starts with pgd (the paper's attack) "
                          f"and runs in the order {list(order)}")
    if sweep["controls"] and not set(sweep["control_base_models"]) & set(sweep["base_models"]):
        raise ConfigError(f"config key sweep.control_base_models: {sweep['control_base_models']} has none of "
                          f"sweep.base_models {sweep['base_models']}, so sweep.controls would make no node")
    fast = [c for c in sweep["controls"] if c.split("-")[0] in ("fgsm", "nfgsm")]
    if config["attack"]["norm"] != "linf" and fast:
        raise ConfigError(f"config key sweep.controls: {fast} are L-inf methods (single signed-gradient steps); "
                          f"attack.norm is {config['attack']['norm']}: drop them or use norm linf")
    check_radii(config)
    for which in ("train", "eval"):
        pgd = config["attack"][which]
        if pgd["steps"] > 0 and pgd["step_size"] * pgd["steps"] < pgd["eps"]:
            raise ConfigError(f"config key attack.{which}: step_size x steps = "
                              f"{pgd['step_size'] * pgd['steps']:g} cannot reach eps {pgd['eps']}")


# (channels, side) of each dataset's images, for the radius bounds; digits are resized to data.image_size
IMAGE_SHAPES = {"digits": (1, None), "fashion_mnist": (1, 28), "cifar10": (3, 32)}


def largest_radius(config: dict) -> float:
    """The largest radius that means something in ``attack.norm``: the diameter of the image cube [0, 1]^(C H W),
    1 in L-inf (the pixel range), sqrt(C H W) in L2 (every image is within that of every other)."""
    if config["attack"]["norm"] == "linf":
        return 1.0
    channels, side = IMAGE_SHAPES[config["data"]["name"]]
    side = side or config["data"]["image_size"]
    return float(channels * side * side) ** 0.5


def check_radii(config: dict) -> None:
    """The attacks' radii and step sizes, and the audit's large L2 radius, are at most ``largest_radius``."""
    norm, bound = config["attack"]["norm"], largest_radius(config)
    radii = {f"attack.{which}.{key}": config["attack"][which][key]
             for which in ("train", "eval") for key in ("eps", "step_size")}
    if norm == "l2":
        radii["evaluate.audit.large_eps_l2"] = config["evaluate"]["audit"]["large_eps_l2"]
    for key, value in radii.items():
        if value > bound:
            shape = "the pixel range" if norm == "linf" else f"sqrt(C H W) of {config['data']['name']}'s images"
            raise ConfigError(f"config key {key}: {value:g} is larger than the diameter of the image cube in "
                              f"attack.norm {norm} ({bound:g}, {shape}): no image is that far from another")


def stage_config(config: dict, stage: str) -> dict:
    """The config sections ``stage`` reads, with the same nesting as the full config. Optional
    sections that are absent (``qat`` without QAT in the sweep) are left out."""
    out: dict = {}
    for dotted in STAGE_SECTIONS[stage]:
        head, _, tail = dotted.partition(".")
        if head not in config:
            continue
        if tail:
            out.setdefault(head, {})[tail] = config[head][tail]
        else:
            out[head] = config[head]
    return out
