"""Config validation: the schema and the cross-field checks reject bad values, naming the key."""
import copy
import tomllib
from pathlib import Path

import pytest
import yaml

from advfine import vocab
from advfine.config import (STAGE_SECTIONS, WORKFLOW_KEYS, ConfigError, load_schema, section_with_defaults,
                            stage_config, validate_config)

from conftest import REPO, tiny_config


SHIPPED = [REPO / "config.yaml", *sorted((REPO / "configs").glob("*.yaml"))]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_the_shipped_configs_are_valid(path):
    validate_config(yaml.safe_load(path.read_text()))


def test_an_overlay_merged_over_its_config_is_valid():
    from snakemake.utils import update_config

    cfg = yaml.safe_load((REPO / "configs" / "fmnist-cpu.yaml").read_text())
    update_config(cfg, yaml.safe_load((REPO / "configs" / "overlays" / "fmnist-cpu-paper-faithful.yaml").read_text()))
    assert validate_config(cfg)["attack"]["eps_space"] == "paper_faithful"


def test_the_paper_configs_hold_the_papers_settings():
    for name, eps, levels in (("paper-fmnist", 0.1, (0.8, 8)), ("paper-cifar10", 8 / 255, (0.5, 8))):
        cfg = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
        assert cfg["attack"]["eps_space"] == "pixel"
        for which in ("train", "eval"):
            assert cfg["attack"][which] == {"eps": pytest.approx(eps), "step_size": 0.01, "steps": 20,
                                            "random_start": True}
        assert cfg["train"] | {"augment": False} == {
            "epochs": 20, "batch_size": 64, "lr": 0.1, "momentum": 0.0, "lr_drop_epoch": 4,
            "lr_after_drop": 0.01, "eps_warmup_epochs": 0, "augment": False}
        assert cfg["finetune"]["epochs"] == 3 and cfg["finetune"]["prune"] == {"lr": 0.1, "momentum": 0.0}
        assert cfg["finetune"]["ptq"] == cfg["finetune"]["qat"] == {"lr": 0.01, "momentum": 0.9}
        assert cfg["sweep"]["prune_sparsities"] == [round(0.1 * i, 1) for i in range(1, 10)]
        assert cfg["sweep"]["ptq_bits"] == cfg["sweep"]["qat_bits"] == [16, 8, 4, 2, 1]
        assert cfg["sweep"]["seeds"] == [0, 1, 2]
        assert (cfg["report"]["prune_sparsity"], cfg["report"]["ptq_bits"]) == levels


def test_a_tiny_config_is_valid():
    validate_config(tiny_config())


def test_validation_fills_in_the_schemas_defaults():
    cfg = tiny_config(validate=False)
    assert "precision" not in cfg and "eps_space" not in cfg["attack"] and "figure2" not in cfg
    validate_config(cfg)
    assert cfg["precision"] == "fp32" and cfg["deterministic"] is True and cfg["attack"]["eps_space"] == "pixel"
    assert cfg["figure2"] == {"enabled": False, "class_index": 8, "n_images": 100, "perplexity": 30}
    assert cfg["evaluate"]["latency_repeats"] == 3 and cfg["train"]["weight_decay"] == 0.0
    assert cfg["resources"] == {"compute": {"gpu": 1}, "light": {"gpu": 0}, "rules": {}}
    assert cfg["sweep"]["qat_bits"] == [] and cfg["sweep"]["qat_base_models"] == ["rb"]
    # a value given is kept; the default of its neighbour is still filled in
    cfg = validate_config(tiny_config(validate=False, resources={"compute": {"mem_mb": 100}}))
    assert cfg["resources"]["compute"] == {"mem_mb": 100, "gpu": 1}
    assert validate_config(copy.deepcopy(cfg)) == cfg  # idempotent


def test_defaults_are_not_shared_between_configs():
    a, b = tiny_config(), tiny_config()
    a["figure2"]["n_images"] = 5
    assert b["figure2"]["n_images"] == 100


def test_a_section_alone_gets_its_defaults_and_its_checks():
    assert section_with_defaults("data", {"name": "digits"})["image_size"] == 28
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        section_with_defaults("train", {"epochs": 0, "batch_size": 1, "lr": 0.1, "momentum": 0.0,
                                        "lr_drop_epoch": None, "lr_after_drop": 0.01})


def _schema_leaves(node: dict, defs: dict, path: tuple = ()):
    """Dotted paths of the schema's leaf keys ('*' for a free key, e.g. resources.rules.*)."""
    while "$ref" in node:  # a reference to $defs, with its sibling keywords (and properties) merged in
        target = defs[node["$ref"].rpartition("/")[2]]
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        node = {**target, **siblings, "properties": {**target.get("properties", {}), **siblings.get("properties", {})}}
    props = node.get("properties", {})
    if isinstance(node.get("additionalProperties"), dict):
        yield from _schema_leaves(node["additionalProperties"], defs, path + ("*",))
    elif not props:
        yield ".".join(path)
    for name, sub in props.items():
        yield from _schema_leaves(sub, defs, path + (name,))


def test_every_schema_key_reaches_a_stage_or_the_workflow():
    """Each leaf key of the schema is in some stage's params (STAGE_SECTIONS) or is one the workflow
    itself consumes (WORKFLOW_KEYS): no setting is silently ignored (``deterministic`` once was)."""
    schema = load_schema()
    leaves = sorted(set(_schema_leaves(schema, schema["$defs"])))
    assert len(leaves) > 60 and "deterministic" in leaves and "qat.init" in leaves
    sections = [dotted for paths in STAGE_SECTIONS.values() for dotted in paths]
    orphans = [leaf for leaf in leaves
               if leaf.split(".")[0] not in WORKFLOW_KEYS
               and not any(leaf == s or leaf.startswith(s + ".") for s in sections)]
    assert orphans == []


def test_deterministic_reaches_every_stage_that_computes():
    cfg = tiny_config(deterministic=False)
    for stage in vocab.COMPUTE_STAGES:
        assert stage_config(cfg, stage)["deterministic"] is False, stage


def test_every_stage_has_a_config_slice():
    assert set(STAGE_SECTIONS) == set(vocab.STAGES)


@pytest.mark.parametrize("old,new", [({"compress.qat": {"init": "parent"}}, "qat"),
                                     ({"report.figure2": {"enabled": False}}, "figure2"),
                                     ({"resources": {"rules": {"quantization_aware_training": {}}}},
                                      "resources.rules.qat"),
                                     ({"evaluate.transfer_attack_for_quantized": True}, "evaluate.attacks")])
def test_moved_keys_say_where_they_went(old, new):
    with pytest.raises(ConfigError, match=rf"(moved to|replaced by .*in) {new}"):
        validate_config(tiny_config(validate=False, **old))


BAD = [
    ({"bogus": 1}, "bogus"),
    ({"data.name": "mnist"}, "data.name"),
    ({"data.bogus": 1}, "bogus"),
    ({"attack.eval.eps": -0.1}, "attack.eval.eps"),
    ({"attack.train.steps": 1.5}, "attack.train.steps"),
    ({"sweep.prune_sparsities": [0.5, 1.0]}, "sweep.prune_sparsities.1"),
    ({"sweep.prune_sparsities": [0.0]}, "sweep.prune_sparsities.0"),
    ({"sweep.ptq_bits": [8, 0]}, "sweep.ptq_bits.1"),
    ({"sweep.ptq_bits": [3]}, "sweep.ptq_bits.0"),
    ({"sweep.qat_bits": [8, 32]}, "sweep.qat_bits.1"),
    ({"sweep.qat_bits": [8]}, "qat"),
    ({"attack.eps_space": "normalized"}, "attack.eps_space"),
    ({"model.arch": "vgg16"}, "model.arch"),
    ({"data.name": "cifar100"}, "data.name"),
    ({"qat": {"init": "random", "epochs": 1, "batch_size": 8, "lr": 0.1, "momentum": 0.0,
              "lr_drop_epoch": None, "lr_after_drop": 0.01}}, "qat.init"),
    ({"qat": {"init": "scratch", "epochs": 1, "batch_size": 8, "lr": 0.1, "momentum": 0.0,
              "lr_drop_epoch": None, "lr_after_drop": 0.01, "bogus": 1}}, "bogus"),
    ({"figure2": {"enabled": True, "class_index": 8, "n_images": 10}, "sweep.finetune": ["none"]},
     "figure2.enabled"),
    ({"figure2": {"enabled": True, "n_images": 0}}, "figure2.n_images"),
    ({"train.augment": "yes"}, "train.augment"),
    ({"sweep.seeds": []}, "sweep.seeds"),
    ({"sweep.base_models": ["st", "xx"]}, "sweep.base_models.1"),
    ({"sweep.finetune": ["none", "adv"]}, "sweep.finetune.1"),
    ({"train.epochs": 0}, "train.epochs"),
    ({"train.lr": "fast"}, "train.lr"),
    ({"finetune.ptq.momentum": 1.0}, "finetune.ptq.momentum"),
    ({"device": "tpu"}, "device"),
    ({"threads": 0}, "threads"),
    ({"experiment": "a/b"}, "experiment"),
    ({"report.prune_sparsity": 0.7}, "report.prune_sparsity"),
    ({"report.ptq_bits": 4}, "report.ptq_bits"),
    ({"attack.eval.step_size": 0.001}, "attack.eval"),
    ({"resources": {"compute": {"gpu": -1}}}, "resources.compute.gpu"),
    ({"resources": {"compute": {"mem_mb": "4G"}}}, "resources.compute.mem_mb"),
    ({"resources": {"light": {"runtime": 0}}}, "resources.light.runtime"),
    ({"resources": {"compute": {"partition": "gpu"}}}, "partition"),
    ({"resources": {"rules": {"train": {"runtime": 60}}}}, "resources.rules"),
    ({"precision": "fp16"}, "precision"),
    ({"deterministic": "yes"}, "deterministic"),
    ({"evaluate.latency_repeats": -1}, "evaluate.latency_repeats"),
    ({"evaluate.latency_batch_size": 0}, "evaluate.latency_batch_size"),
    ({"evaluate.int8_export": 1}, "evaluate.int8_export"),
    ({"evaluate.attacks": ["apgd_ce", "pgd"]}, "evaluate.attacks"),
    ({"evaluate.attacks": ["pgd", "square", "apgd_t"]}, "evaluate.attacks"),
    ({"evaluate.attacks": ["pgd", "cw"]}, "evaluate.attacks.1"),
    ({"evaluate.apgd": {"steps": 0}}, "evaluate.apgd.steps"),
    ({"evaluate.square": {"p_init": 2}}, "evaluate.square.p_init"),
    ({"evaluate.audit": {"large_eps": 0}}, "evaluate.audit.large_eps"),
    ({"compress.quantize_first_input": "no"}, "compress.quantize_first_input"),
]


@pytest.mark.parametrize("change,key", BAD, ids=[k for _, k in BAD])
def test_bad_values_are_rejected_naming_the_key(change, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(tiny_config(validate=False, **change))


def test_a_missing_key_is_named():
    cfg = tiny_config(validate=False)
    del cfg["train"]["lr"]
    with pytest.raises(ConfigError, match="'lr' is a required property"):
        validate_config(cfg)


def test_stage_config_holds_only_what_the_stage_reads():
    cfg = tiny_config()
    train = stage_config(cfg, "train_base")
    assert set(train) == {"model", "precision", "deterministic", "attack", "train", "adversarial"}
    assert set(train["attack"]) == {"eps_space", "norm", "train"} and train["adversarial"]["base_objective"] == "ad"
    paper = validate_config(yaml.safe_load((REPO / "configs" / "paper-fmnist.yaml").read_text()))
    assert stage_config(paper, "compress") == {"deterministic": True,
                                               "compress": {"calibration_batches": 16, "calibration_batch_size": 64,
                                                            "quantize_first_input": True}}
    assert stage_config(paper, "qat")["qat"]["init"] == "scratch"
    assert "qat" not in stage_config(cfg, "qat")  # no QAT in the sweep: the section is optional
    more_seeds = copy.deepcopy(cfg)
    more_seeds["sweep"]["seeds"] = [0, 1, 2]
    for stage in vocab.STAGES:
        assert stage_config(more_seeds, stage) == stage_config(cfg, stage)


def test_conda_env_pins_equal_the_pip_requirements():
    pip_pins = [l.strip() for l in (REPO / "requirements.txt").read_text().splitlines()
                if l.strip() and not l.startswith("#")]
    env = yaml.safe_load((REPO / "envs" / "advfine.yaml").read_text())
    conda_pins = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(conda_pins) == sorted(pip_pins)
    assert all("==" in pin for pin in pip_pins)


def test_pyproject_declares_the_pinned_requirements():
    """``pip install .`` gets the runtime of requirements.txt; the dev extra adds its tools."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pip_pins = [l.strip() for l in (REPO / "requirements.txt").read_text().splitlines()
                if l.strip() and not l.startswith("#")]
    assert sorted(project["dependencies"] + project["optional-dependencies"]["dev"]) == sorted(pip_pins)


def test_control_base_models_without_any_base_model_is_a_config_error():
    with pytest.raises(ConfigError, match="sweep.control_base_models"):
        validate_config(tiny_config(validate=False, **{"sweep.base_models": ["st"], "sweep.controls": ["fgsm"],
                                                       "sweep.control_base_models": ["rb"]}))
