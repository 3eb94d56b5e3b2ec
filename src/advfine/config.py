"""Config checks beyond the JSON schema, and the slice of the config each stage reads.

Each stage gets only the sections it uses (``stage_config``); the workflow passes that slice as
Snakemake params, so changing a setting reruns exactly the stages that read it, and adding a seed
or a compression level to ``sweep`` reruns nothing that exists."""
from __future__ import annotations

from pathlib import Path

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"

STAGE_SECTIONS = {
    "prepare_data": ("data",),
    "train_base": ("model", "precision", "attack.eps_space", "attack.train", "train"),
    "compress": ("compress.calibration_batches", "compress.calibration_batch_size"),
    "qat": ("model", "attack.eps_space", "attack.train", "compress"),
    "finetune": ("precision", "attack.eps_space", "attack.train", "finetune"),
    "evaluate": ("model", "precision", "attack.eps_space", "attack.eval", "evaluate",
                 "compress.calibration_batches", "compress.calibration_batch_size"),  # INT8 export
    "features": ("attack.eps_space", "attack.eval", "report.figure2"),
}


# Top-level keys added after results existed, with their defaults: a stage's params carry them only
# when they differ from the default, so results computed before the key existed (in fp32) stay valid.
OPTIONAL_TOP_LEVEL = {"precision": "fp32"}


class ConfigError(ValueError):
    """A config value is wrong; the message names the key."""


def validate_config(config: dict) -> None:
    """JSON-schema validation (as Snakemake does) plus the cross-field checks below."""
    import jsonschema
    import yaml

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ConfigError(f"config key {key}: {err.message}")
    check_config(config)


def check_config(config: dict) -> None:
    """Checks the schema cannot express."""
    sweep, report = config["sweep"], config["report"]
    qat_bits = sweep.get("qat_bits", [])
    if report["prune_sparsity"] not in sweep["prune_sparsities"] and sweep["prune_sparsities"]:
        raise ConfigError(f"config key report.prune_sparsity: {report['prune_sparsity']} is not in "
                          f"sweep.prune_sparsities {sweep['prune_sparsities']}")
    if report["ptq_bits"] not in sweep["ptq_bits"] and sweep["ptq_bits"]:
        raise ConfigError(f"config key report.ptq_bits: {report['ptq_bits']} is not in "
                          f"sweep.ptq_bits {sweep['ptq_bits']}")
    if sweep["dense_finetune"] and "st" not in sweep["base_models"]:
        raise ConfigError("config key sweep.dense_finetune: fine-tunes the standard model, "
                          "so sweep.base_models must contain 'st'")
    if qat_bits and "qat" not in config["compress"]:
        raise ConfigError("config key compress.qat: missing; sweep.qat_bits needs the QAT training settings")
    if qat_bits and set(sweep["finetune"]) - {"none"} and "qat" not in config["finetune"]:
        raise ConfigError("config key finetune.qat: missing; fine-tuning QAT models (sweep.qat_bits with "
                          "sweep.finetune st/ad) needs its lr and momentum")
    figure2 = report.get("figure2", {"enabled": False})
    if figure2["enabled"]:
        needs = {"model.arch": (config["model"]["arch"] == "cnn8", "cnn8 (layers 6-8 of the paper's CNN)"),
                 "sweep.base_models": ("st" in sweep["base_models"] and "rb" in sweep["base_models"], "st and rb"),
                 "sweep.finetune": ({"st", "ad"} <= set(sweep["finetune"]), "st and ad"),
                 "sweep.prune_sparsities": (bool(sweep["prune_sparsities"]), "report.prune_sparsity"),
                 "sweep.ptq_bits": (bool(sweep["ptq_bits"]), "report.ptq_bits")}
        for key, (ok, what) in needs.items():
            if not ok:
                raise ConfigError(f"config key report.figure2.enabled: Figure 2 needs {key} to contain {what}; "
                                  "set report.figure2.enabled: false or extend the sweep")
    if len({f"{s:g}" for s in sweep["prune_sparsities"]}) != len(sweep["prune_sparsities"]):
        raise ConfigError("config key sweep.prune_sparsities: two values give the same folder name")
    for which in ("train", "eval"):
        pgd = config["attack"][which]
        if pgd["steps"] > 0 and pgd["step_size"] * pgd["steps"] < pgd["eps"]:
            raise ConfigError(f"config key attack.{which}: step_size x steps = "
                              f"{pgd['step_size'] * pgd['steps']:g} cannot reach eps {pgd['eps']}")


def stage_config(config: dict, stage: str) -> dict:
    """The config sections ``stage`` reads, with the same nesting as the full config."""
    out: dict = {}
    for dotted in STAGE_SECTIONS[stage]:
        head, _, tail = dotted.partition(".")
        if tail:
            if tail in config[head]:  # optional keys (e.g. attack.eps_space) may be absent
                out.setdefault(head, {})[tail] = config[head][tail]
        elif head not in OPTIONAL_TOP_LEVEL:
            out[head] = config[head]
        elif config.get(head, OPTIONAL_TOP_LEVEL[head]) != OPTIONAL_TOP_LEVEL[head]:
            out[head] = config[head]
    return out
