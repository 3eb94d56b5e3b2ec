"""The experiment config: which files make it (``resolve_config``: an experiment config file is complete,
an overlay names its base with ``extends``), validation against ``config.schema.yaml`` beside this module
(package data, linked from workflow/schemas/ where Snakemake workflows keep it; it holds every default:
validation fills them in, so code reads keys without defaults of its own), the checks the schema cannot
express, and the slice of the config each stage reads.

Each stage gets only the sections it uses (``stage_config``); the workflow passes that slice as the
rule's Snakemake params, so changing a setting reruns exactly the stages that read it, and adding a
seed or a compression level to ``sweep`` reruns nothing that exists. Every leaf key of the schema
reaches some stage's slice or is one of ``WORKFLOW_KEYS`` (tests/test_config.py walks the schema).
No torch import: the Snakefile uses this module at parse time."""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path

import jsonschema
import yaml

from advfine.core.attacks.threat import PGDSettings, ThreatModel
from advfine.core.catalog import NUM_CLASSES, audit_large_eps, check_attack_suite, escalation_step_suite, image_shape
from advfine.core.schedule import TrainSchedule, finetune_section
from advfine.pipeline.vocab import PRUNE, compression_label

SCHEMA_PATH = Path(__file__).resolve().parent / "config.schema.yaml"

# The config each stage reads, as dotted paths (a section, or one key of it); keys are the stage names.
# Exactly what it reads (tests/test_stage_slices.py records the keys each stage reads): a key outside its
# slice would rerun it for nothing, a key it reads and lacks would fail it.
STAGE_SECTIONS = {
    "prepare_data": ("data",),
    "train_base": ("model", "precision", "deterministic", "attack.eps_space", "attack.norm", "attack.train",
                   "train", "adversarial"),
    "compress": ("deterministic", "compress"),
    # model.arch: QAT from scratch builds the architecture
    "qat": ("model.arch", "deterministic", "attack.eps_space", "attack.norm", "attack.train", "compress", "qat"),
    # train and compress: the from-scratch controls' full budget and the quantized ones' calibration
    "finetune": ("precision", "deterministic", "attack.eps_space", "attack.norm", "attack.train", "finetune",
                 "adversarial", "train", "compress"),
    "evaluate": ("precision", "deterministic", "attack.eps_space", "attack.norm", "attack.eval", "evaluate"),
    "deployment": ("deterministic", "deployment"),
    "aggregate": ("report",),
    "plot": (),
    "figure2": ("deterministic", "attack.eps_space", "attack.norm", "attack.eval", "figure2"),
}

# Top-level keys the workflow itself consumes instead of a stage's params, and how.
WORKFLOW_KEYS = {
    "experiment": "the results folder results/{experiment}/, a wildcard of every path",
    "device": "read by every job when it starts (advfine.pipeline.job); not a param, so where a result was "
              "computed is recorded in it (provenance) but is not part of its identity",
    "threads": "every model rule's threads, but deployment's (it holds every core and times with deployment.threads)",
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
    ("evaluate", "latency_batch_size"): "moved to deployment.batch_size (the deployment stage times every model "
                                        "in one job that runs alone)",
    ("evaluate", "latency_repeats"): "moved to deployment.rounds (each round times every model once; 0 still "
                                     "switches timing off)",
}


class ConfigError(ValueError):
    """A config value is wrong; the message names the key."""


# ------------------------------------------------------------------------------ which files make the config
# The top-level key by which an overlay names the config it changes (a path relative to the workflow
# directory, or absolute). A config file without it is a complete experiment: its keys plus the schema's
# defaults, nothing from any other file.
EXTENDS = "extends"
DEFAULT_CONFIG = "config.yaml"  # the experiment of a run without --configfile (in the working directory)


def read_config_file(path: str | Path) -> dict:
    """One config file as a dict (its ``extends`` key included). Raises ConfigError naming the file."""
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"config file {path}: cannot be read ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path}: not valid YAML: {err}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path}: holds no mapping of config keys")
    return loaded


def config_chain(path: str | Path, workflow_dir: str | Path) -> list[Path]:
    """The files that make config file ``path``: its base (``extends``, recursively) first, ``path`` last."""
    chain: list[Path] = []
    current = Path(path).resolve()
    while True:
        if current in chain:
            cycle = " -> ".join(str(p) for p in [*reversed(chain), current])
            raise ConfigError(f"config key {EXTENDS}: the files extend each other in a cycle ({cycle})")
        chain.append(current)
        base = read_config_file(current).get(EXTENDS)
        if base is None:
            return chain[::-1]
        if not isinstance(base, str) or not base:
            raise ConfigError(f"config key {EXTENDS} in {current}: must be the path of the config it changes")
        resolved = (Path(workflow_dir) / base).resolve()
        if not resolved.is_file():
            raise ConfigError(f"config key {EXTENDS} in {current}: {base} is not a file (relative paths are "
                              f"resolved against the workflow directory {workflow_dir})")
        current = resolved


def merged(base: dict, over: Mapping) -> dict:
    """``base`` with ``over`` merged in: nested mappings key by key, any other value replaced (Snakemake's
    way of merging config files and --config)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(dict(value) if isinstance(value, Mapping) else value)
    return out


def config_files(configfiles: Sequence[str | Path], workflow_dir: str | Path,
                 default: str | Path = DEFAULT_CONFIG) -> list[Path]:
    """The files a run's config is merged from, in order: each of ``configfiles`` (``--configfile``, or
    ``default`` when none is given) after its bases, each file once. All must share one complete
    experiment config at the root: an overlay passed after its base gives what it gives alone."""
    if not configfiles:
        if not Path(default).is_file():
            raise ConfigError(f"no --configfile given and no {default} in the working directory {Path.cwd()}: "
                              "pass --configfile=configs/<experiment>.yaml")
        configfiles = [default]
    chains = [config_chain(path, workflow_dir) for path in configfiles]
    roots = {chain[0] for chain in chains}
    if len(roots) > 1:
        raise ConfigError(f"config files {', '.join(str(p) for p in configfiles)}: they hold {len(roots)} complete "
                          f"experiment configs ({', '.join(sorted(str(r) for r in roots))}); pass one, with the "
                          f"overlays that change it (an overlay names its base with `{EXTENDS}: <path>`)")
    ordered: list[Path] = []
    for chain in chains:
        ordered += [path for path in chain if path not in ordered]
    return ordered


def resolve_config(configfiles: Sequence[str | Path], overrides: Mapping, workflow_dir: str | Path,
                   default: str | Path = DEFAULT_CONFIG) -> dict:
    """The config of a run, as every stage gets it: the files of ``config_files`` merged in order,
    ``overrides`` (``--config key=value``) on top, validated with the schema's defaults filled in.
    ``workflow_dir`` resolves ``extends``. Raises ConfigError naming the key or file."""
    files = config_files(configfiles, workflow_dir, default)
    config: dict = {}
    for path in files:
        config = merged(config, {k: v for k, v in read_config_file(path).items() if k != EXTENDS})
    config = merged(config, overrides)
    missing = [key for key in load_schema()["required"] if key not in config]
    if missing:
        raise ConfigError(f"config key {missing[0]}: missing from {files[0]}, a complete experiment config (it "
                          f"names no base); an overlay names the config it changes with `{EXTENDS}: <path>`")
    return validate_config(config)


def write_resolved_config(config: dict, path: str | Path) -> None:
    """``config`` (resolved, with its defaults) as YAML at ``path``, atomically: what a run used,
    beside its results. (Not files.atomic_path: that module imports torch, and this runs in Snakemake's
    own process.)"""
    header = ("# The config every stage of this experiment got: the config files merged (an overlay after\n"
              "# its base), --config overrides, and the schema's defaults. Written by rule resolved_config.\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(header + yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100))
    tmp.replace(path)


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
    if sweep["qat_bits"] and set(sweep["finetune"]) - {"none"}:
        try:
            finetune_section(config["finetune"], "qat")
        except ValueError as err:
            raise ConfigError(f"{err}: fine-tuning QAT models (sweep.qat_bits with sweep.finetune st/ad) "
                              "needs them") from None
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
    if len({compression_label(PRUNE, s) for s in sweep["prune_sparsities"]}) != len(sweep["prune_sparsities"]):
        raise ConfigError("config key sweep.prune_sparsities: two values give the same folder name")
    try:
        check_attack_suite(config["evaluate"]["attacks"])
    except ValueError as err:
        raise ConfigError(f"config key evaluate.attacks: {err}") from None
    for i, step in enumerate(config["evaluate"]["escalation"]["steps"]):
        try:
            escalation_step_suite(step)
        except ValueError as err:
            raise ConfigError(f"config key evaluate.escalation.steps.{i}.attacks: {err}") from None
    if sweep["controls"] and not set(sweep["control_base_models"]) & set(sweep["base_models"]):
        raise ConfigError(f"config key sweep.control_base_models: {sweep['control_base_models']} has none of "
                          f"sweep.base_models {sweep['base_models']}, so sweep.controls would make no node")
    fast = [c for c in sweep["controls"] if c.split("-")[0] in ("fgsm", "nfgsm")]
    norm = threat_models(config)["train"].norm
    if norm != "linf" and fast:
        raise ConfigError(f"config key sweep.controls: {fast} are L-inf methods (single signed-gradient steps); "
                          f"attack.norm is {norm}: drop them or use norm linf")
    check_radii(config)
    _check_schedules(config)
    figure2, dataset = config["figure2"], config["data"]["name"]
    if figure2["enabled"] and figure2["class_index"] >= NUM_CLASSES[dataset]:
        raise ConfigError(f"config key figure2.class_index: {figure2['class_index']} is not a class of {dataset} "
                          f"(classes 0..{NUM_CLASSES[dataset] - 1})")


def adversarial_schedules(config: dict) -> dict[str, str]:
    """The training schedules the sweep runs against an attack (section name -> the nodes that do)."""
    sweep = config["sweep"]
    used = {}
    if "rb" in sweep["base_models"]:
        used["train"] = "the adversarial base model f_rb (sweep.base_models: rb)"
    elif "scratch-full" in sweep["controls"]:
        used["train"] = "the control arm scratch-full (sweep.controls)"
    finetuning = [c for c in sweep["controls"] if c != "scratch-full"]
    if "ad" in sweep["finetune"] + sweep["dense_finetune"] or finetuning:
        used["finetune"] = "adversarial fine-tuning (sweep.finetune or sweep.dense_finetune: ad, sweep.controls)"
    if sweep["qat_bits"] and "rb" in sweep["base_models"] and "rb" in sweep["qat_base_models"]:
        used["qat"] = "QAT of the adversarial base model (sweep.qat_bits, sweep.qat_base_models: rb)"
    return used


def _check_schedules(config: dict) -> None:
    """An lr drop inside the epochs; an eps warm-up that ends before the last epoch where the schedule
    trains against an attack (``TrainSchedule.check_lr_drop``, ``check_eps_warmup``)."""
    schedules = {name: TrainSchedule.from_config(config[name]) for name in ("train", "qat") if config.get(name)}
    # the fine-tuning arms share their epochs and eps warm-up; every compression method has its lr
    schedules["finetune"] = TrainSchedule.from_config(finetune_section(config["finetune"], "dense"))
    try:
        for name in ("train", "qat"):
            if name in schedules:
                schedules[name].check_lr_drop()
        for name, who in adversarial_schedules(config).items():
            schedules[name].check_eps_warmup(who)
    except ValueError as err:
        raise ConfigError(f"config key {name}.{err}") from None


def check_device(device: str) -> None:
    """Refuse config key ``device`` when it names a device this machine lacks (CUDA, a CUDA index beyond
    the visible GPUs, MPS), or when it is ``auto`` on a machine with an NVIDIA GPU that CUDA cannot use
    (``runtime.resolve_device`` says why): the workflow asks before jobs run on this machine. A cluster
    job's node is checked when the job starts (``runtime.resolve_device``, which this calls)."""
    if device == "cpu":
        return
    # deferred: torch takes seconds to import, and the parse never needs it
    from advfine.core.runtime import resolve_device

    try:
        resolve_device(device)
    except RuntimeError as err:
        raise ConfigError(f"config key {err}") from None


def threat_models(config: dict) -> dict[str, ThreatModel]:
    """The threat models of training and evaluation (``attack.train``, ``attack.eval``)."""
    return {which: ThreatModel.from_config(config["attack"], which) for which in ("train", "eval")}


def largest_radius(config: dict) -> float:
    """The largest radius that means something in the config's norm, in pixels: the diameter of the image
    cube of the dataset's images (``ThreatModel.diameter``)."""
    channels, height, width = image_shape(config["data"])
    return threat_models(config)["eval"].diameter(channels * height * width)


def check_radii(config: dict) -> None:
    """The attacks' radii and step sizes (in pixels), and the audit's large radius, are at most
    ``largest_radius``; PGD's steps can reach its radius (``PGDSettings.check_reach``)."""
    bound = largest_radius(config)
    radii = {}
    for which in ("train", "eval"):
        pgd = PGDSettings.from_config(config["attack"], which)
        try:
            pgd.check_reach()
        except ValueError as err:
            raise ConfigError(f"config key attack.{which}: {err}") from None
        radii[f"attack.{which}.eps"] = pgd.threat.eps
        radii[f"attack.{which}.step_size"] = pgd.step_size
    norm = pgd.threat.norm
    large_key = "evaluate.audit.large_eps" if norm == "linf" else "evaluate.audit.large_eps_l2"
    radii[large_key] = audit_large_eps(config["evaluate"]["audit"], norm)
    for key, value in radii.items():
        if value > bound:
            shape = "the pixel range" if norm == "linf" else f"sqrt(C H W) of {config['data']['name']}'s images"
            raise ConfigError(f"config key {key}: {value:g} pixels is larger than the diameter of the image cube "
                              f"in the {norm} norm ({bound:g}, {shape}): no image is that far from another")


def stage_config(config: dict, stage: str) -> dict:
    """The config sections ``stage`` reads, with the same nesting as the full config, keys sorted (a
    rule's params are compared by their repr: the order of keys in a config file is not a setting).
    Optional sections that are absent (``qat`` without QAT in the sweep) are left out."""
    out: dict = {}
    for dotted in STAGE_SECTIONS[stage]:
        head, _, tail = dotted.partition(".")
        if head not in config:
            continue
        if tail:
            out.setdefault(head, {})[tail] = config[head][tail]
        else:
            out[head] = config[head]
    return _sorted_keys(out)


def _sorted_keys(value):
    if isinstance(value, dict):
        return {key: _sorted_keys(value[key]) for key in sorted(value)}
    return value
