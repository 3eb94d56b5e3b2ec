"""Config validation: the schema and the cross-field checks reject bad values, naming the key."""
import copy
import tomllib
from pathlib import Path

import pytest
import torch
import yaml

from advfine.pipeline import vocab
from advfine.pipeline.config import (EXTENDS, STAGE_SECTIONS, WORKFLOW_KEYS, ConfigError, check_device, config_files,
                                     load_schema, resolve_config, section_with_defaults, stage_config, validate_config)

from conftest import REPO, tiny_config


SHIPPED = [REPO / "config.yaml", *sorted((REPO / "configs").glob("*.yaml"))]
OVERLAYS = sorted((REPO / "configs" / "overlays").glob("*.yaml"))
CONFIGS = REPO / "configs"


def resolved(*files, overrides=None) -> dict:
    """The config a run with ``--configfile files... --config overrides`` gets (as the Snakefile resolves it)."""
    return resolve_config([REPO / f for f in files], overrides or {}, REPO, default=REPO / "config.yaml")


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_the_shipped_configs_are_complete_and_valid(path):
    """An experiment config holds every required key itself and names no base: nothing comes from config.yaml."""
    raw = yaml.safe_load(path.read_text())
    assert EXTENDS not in raw
    assert resolved(path) == validate_config(raw)


@pytest.mark.parametrize("path", OVERLAYS, ids=[p.name for p in OVERLAYS])
def test_every_overlay_names_its_base_and_resolves(path):
    raw = yaml.safe_load(path.read_text())
    base = REPO / raw[EXTENDS]
    assert base.is_file() and EXTENDS not in yaml.safe_load(base.read_text())
    alone = resolved(path)
    assert alone == resolved(base, path)  # the README's `--configfile base overlay` gives the same
    assert alone == resolved(path, base)  # each file counts once, after its base
    assert alone["experiment"] == raw.get("experiment", resolved(base)["experiment"])


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("path", OVERLAYS, ids=[p.name for p in OVERLAYS])
def test_an_overlay_changes_only_the_keys_it_lists(path):
    raw = yaml.safe_load(path.read_text())
    base, overlay = _flat(resolved(REPO / raw[EXTENDS])), _flat(resolved(path))
    changed = {key for key in base.keys() | overlay.keys() if base.get(key) != overlay.get(key)}
    listed = _flat({k: v for k, v in raw.items() if k != EXTENDS})
    sections = {key.rpartition(".")[0] for key in listed}  # a section it sets gets the schema's defaults too
    assert changed and all(key in listed or key.rpartition(".")[0] in sections for key in changed), changed
    assert all(overlay[key] == value for key, value in listed.items())


STANDARD_SUITE = {"evaluate.attacks": ["pgd", "apgd_ce", "apgd_t", "fab_t", "transfer", "square"],
                  "evaluate.apgd.steps": 100, "evaluate.apgd.restarts": 1, "evaluate.apgd.target_classes": 9,
                  "evaluate.fab.steps": 100, "evaluate.square.queries": 5000,
                  "evaluate.audit.more_restarts": 2, "evaluate.audit.more_effort_samples": 1000}


@pytest.mark.parametrize("name", ["paper-fmnist", "paper-cifar10"])
def test_the_paper_configs_get_autoattacks_standard_suite(name):
    """What their comments promise: the schema's default suite, none of config.yaml's light one."""
    cfg = _flat(resolved(CONFIGS / f"{name}.yaml"))
    assert {key: cfg[key] for key in STANDARD_SUITE} == STANDARD_SUITE
    assert [cfg[f"{schedule}.eps_warmup_epochs"] for schedule in ("train", "qat", "finetune")] == [0, 0, 0]
    assert "resources.rules.train_base.runtime" in cfg and cfg["experiment"] == name


def test_fmnist_cpu_keeps_its_documented_light_suite_and_warm_ups():
    """docs/results/fmnist-cpu/README.md: PGD-20, APGD-CE and APGD-T (1 target class) at 10 steps, transfer,
    Square 50 queries; the audit's more-effort check with twice the steps, 1 restart, 100 samples; f_rb's
    first epoch clean, no fine-tuning warm-up."""
    cfg = _flat(resolved(CONFIGS / "fmnist-cpu.yaml"))
    expected = {"evaluate.attacks": ["pgd", "apgd_ce", "apgd_t", "transfer", "square"], "evaluate.apgd.steps": 10,
                "evaluate.apgd.target_classes": 1, "evaluate.square.queries": 50, "attack.eval.steps": 20,
                "evaluate.audit.more_steps_factor": 2, "evaluate.audit.more_restarts": 1,
                "evaluate.audit.more_effort_samples": 100, "train.eps_warmup_epochs": 1,
                "finetune.eps_warmup_epochs": 0, "sweep.qat_bits": [], "data.test_subset": 1000}
    assert {key: cfg[key] for key in expected} == expected
    assert not any(key.startswith("qat.") for key in cfg)  # no QAT section: config.yaml's is not inherited


def test_the_paper_faithful_overlay_gets_the_cpu_study_plus_its_own_changes():
    cfg = _flat(resolved(CONFIGS / "overlays" / "fmnist-cpu-paper-faithful.yaml"))
    base = _flat(resolved(CONFIGS / "fmnist-cpu.yaml"))
    assert cfg["attack.eps_space"] == "paper_faithful" and cfg["attack.train.random_start"] is False
    assert cfg["sweep.seeds"] == [0, 1] and cfg["sweep.controls"] == ["scratch"] and cfg["figure2.enabled"] is False
    for key in ("evaluate.apgd.steps", "evaluate.square.queries", "evaluate.audit.more_effort_samples",
                "train.epochs", "attack.train.steps", "data.train_subset"):
        assert cfg[key] == base[key], key


def test_config_overrides_apply_on_top_with_and_without_a_config_file():
    assert resolved(overrides={"experiment": "mine", "threads": 3})["threads"] == 3
    assert resolved(overrides={"experiment": "mine"})["data"]["name"] == "digits"  # config.yaml, the demo
    cfg = resolved(CONFIGS / "overlays" / "matched-optimizers.yaml", overrides={"experiment": "x", "device": "cpu"})
    assert (cfg["experiment"], cfg["device"], cfg["finetune"]["prune"]["lr"]) == ("x", "cpu", 0.01)
    nested = resolved(CONFIGS / "paper-fmnist.yaml", overrides={"finetune": {"epochs": 5}})
    assert nested["finetune"]["epochs"] == 5 and nested["finetune"]["prune"] == {"lr": 0.1, "momentum": 0.0,
                                                                                 "weight_decay": 0.0}


def _write(path, config) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_overlays_chain_and_a_config_file_is_complete(tmp_path):
    """extends is recursive; a key no file in the chain sets comes from the schema."""
    base = _write(tmp_path / "base.yaml", tiny_config(validate=False))
    middle = _write(tmp_path / "middle.yaml", {EXTENDS: str(base), "experiment": "middle", "train": {"epochs": 3}})
    top = _write(tmp_path / "top.yaml", {EXTENDS: str(middle), "experiment": "top"})
    cfg = resolve_config([top], {}, REPO)
    assert (cfg["experiment"], cfg["train"]["epochs"], cfg["evaluate"]["square"]["queries"]) == ("top", 3, 20)
    assert cfg["evaluate"]["fab"]["steps"] == 100 and "qat" not in cfg  # schema defaults; config.yaml unread
    assert config_files([middle, top], REPO) == [base, middle, top]


@pytest.mark.parametrize("case,message", [
    ("two experiments", "2 complete experiment configs"),
    ("overlay without base", "config key data: missing from .*partial.yaml, a complete experiment config"),
    ("missing base", "config key extends in .*no-such.yaml is not a file"),
    ("cycle", "config key extends: the files extend each other in a cycle"),
    ("not a mapping", "holds no mapping"),
])
def test_a_bad_set_of_config_files_is_refused_naming_the_file(tmp_path, case, message):
    one = _write(tmp_path / "one.yaml", tiny_config(validate=False))
    files = {"two experiments": [one, CONFIGS / "paper-fmnist.yaml"],
             "overlay without base": [_write(tmp_path / "partial.yaml", {"experiment": "partial"})],
             "missing base": [_write(tmp_path / "lost.yaml", {EXTENDS: "configs/no-such.yaml"})],
             "cycle": [_write(tmp_path / "a.yaml", {EXTENDS: str(tmp_path / "b.yaml")}),
                       _write(tmp_path / "b.yaml", {EXTENDS: str(tmp_path / "a.yaml")})][:1],
             "not a mapping": [_write(tmp_path / "list.yaml", [1, 2])]}[case]
    with pytest.raises(ConfigError, match=message):
        resolve_config(files, {}, REPO)


def test_without_a_config_file_the_working_directorys_config_yaml_is_the_experiment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no --configfile given and no config.yaml"):
        resolve_config([], {}, REPO)
    _write(tmp_path / "config.yaml", tiny_config(validate=False))
    assert resolve_config([], {"threads": 2}, REPO) == tiny_config(threads=2)


def test_the_paper_configs_hold_the_papers_settings():
    for name, eps, levels in (("paper-fmnist", 0.1, (0.8, 8)), ("paper-cifar10", 8 / 255, (0.5, 8))):
        cfg = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
        assert cfg["attack"]["eps_space"] == "pixel"
        for which in ("train", "eval"):
            assert cfg["attack"][which] == {"eps": pytest.approx(eps), "step_size": 0.01, "steps": 20,
                                            "random_start": True}
        assert cfg["train"] | {"augment": False} == {
            "epochs": 20, "batch_size": 64, "lr": 0.1, "momentum": 0.0, "lr_drop_epoch": 4,
            "lr_after_drop": 0.01, "eps_warmup_epochs": 0, "augment": False, "grad_clip_norm": None}
        schedule = resolved(REPO / "configs" / f"{name}.yaml")["train"]  # nothing of ours added by defaults
        assert (schedule["lr_warmup_epochs"], schedule["grad_clip_norm"], schedule["weight_decay"]) == (0, None, 0)
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
    assert cfg["deployment"] == {"batch_size": 256, "threads": 1, "warmup": 1, "rounds": 20}
    assert cfg["train"]["weight_decay"] == 0.0
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
                                     ({"evaluate.transfer_attack_for_quantized": True}, "evaluate.attacks"),
                                     ({"evaluate.latency_batch_size": 256}, "deployment.batch_size"),
                                     ({"evaluate.latency_repeats": 0}, "deployment.rounds")])
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
    ({"deployment": {"rounds": -1}}, "deployment.rounds"),
    ({"deployment": {"batch_size": 0}}, "deployment.batch_size"),
    ({"deployment": {"threads": 0}}, "deployment.threads"),
    ({"resources": {"rules": {"deployment": {"slurm_extra": 1}}}}, "resources.rules.deployment.slurm_extra"),
    ({"evaluate.int8_export": 1}, "evaluate.int8_export"),
    ({"evaluate.attacks": ["apgd_ce", "pgd"]}, "evaluate.attacks"),
    ({"evaluate.attacks": ["pgd", "square", "apgd_t"]}, "evaluate.attacks"),
    ({"evaluate.attacks": ["pgd", "cw"]}, "evaluate.attacks.1"),
    ({"evaluate.apgd": {"steps": 0}}, "evaluate.apgd.steps"),
    ({"evaluate.square": {"p_init": 2}}, "evaluate.square.p_init"),
    ({"evaluate.audit": {"large_eps": 0}}, "evaluate.audit.large_eps"),
    ({"compress.quantize_first_input": "no"}, "compress.quantize_first_input"),
    # an eps warm-up as long as an adversarial schedule: the last epoch never attacks at the full eps
    ({"finetune.eps_warmup_epochs": 1}, "finetune.eps_warmup_epochs"),  # the tiny config: 1 epoch, ad
    ({"finetune.eps_warmup_epochs": 1, "sweep.finetune": ["none", "st"], "sweep.dense_finetune": [],
      "sweep.controls": ["fgsm"]}, "finetune.eps_warmup_epochs"),  # a control arm fine-tunes adversarially
    ({"train.eps_warmup_epochs": 2}, "train.eps_warmup_epochs"),  # f_rb, 2 epochs
    ({"train.eps_warmup_epochs": 3, "sweep.base_models": ["st"], "sweep.dense_finetune": [],
      "sweep.controls": ["scratch-full"]}, "train.eps_warmup_epochs"),  # scratch-full trains on `train`
    ({"sweep.qat_bits": [8], "finetune.qat": {"lr": 0.01, "momentum": 0.9},
      "qat": {"init": "parent", "epochs": 2, "batch_size": 8, "lr": 0.1, "momentum": 0.0, "lr_drop_epoch": None,
              "lr_after_drop": 0.01, "eps_warmup_epochs": 2}}, "qat.eps_warmup_epochs"),
    # an lr drop after the last epoch never happens
    ({"train.lr_drop_epoch": 2}, "train.lr_drop_epoch"),
    ({"qat": {"init": "parent", "epochs": 2, "batch_size": 8, "lr": 0.1, "momentum": 0.0, "lr_drop_epoch": 3,
              "lr_after_drop": 0.01}}, "qat.lr_drop_epoch"),
    ({"figure2": {"enabled": True, "class_index": 10}, "sweep.prune_sparsities": [0.5]}, "figure2.class_index"),
    # fine-tuning a QAT model needs its own lr and momentum
    ({"sweep.qat_bits": [8], "qat": {"init": "parent", "epochs": 2, "batch_size": 8, "lr": 0.1, "momentum": 0.0,
                                      "lr_drop_epoch": None, "lr_after_drop": 0.01},
      "sweep.qat_base_models": ["st"]}, "finetune.qat"),
    ({"attack.eval.eps": 0.2, "attack.eval.step_size": 0.01, "attack.eval.steps": 10}, "attack.eval"),
    ({"sweep.prune_sparsities": [0.5, 0.5000001]}, "sweep.prune_sparsities: two values give the same folder"),
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


def test_the_order_of_keys_in_a_config_file_changes_no_stages_params():
    """Snakemake compares a rule's params by their repr, which follows the order of dict keys."""
    def reversed_keys(value):
        return {k: reversed_keys(value[k]) for k in reversed(list(value))} if isinstance(value, dict) else value

    cfg = tiny_config()
    shuffled = validate_config(reversed_keys(tiny_config(validate=False)))
    assert list(shuffled["train"]) != list(cfg["train"])
    for stage in vocab.STAGES:
        assert repr(stage_config(shuffled, stage)) == repr(stage_config(cfg, stage)), stage


def test_conda_env_pins_equal_the_pip_requirements():
    pip_pins = [l.strip() for l in (REPO / "requirements.txt").read_text().splitlines()
                if l.strip() and not l.startswith("#")]
    env = yaml.safe_load((REPO / "envs" / "advfine.yaml").read_text())
    conda_pins = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(conda_pins) == sorted(pip_pins)
    assert all("==" in pin for pin in pip_pins)


def test_pyproject_declares_the_pinned_requirements():
    """``pip install .`` gets the runtime of requirements.txt; the extras add the rest (dev tools, energy meter)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pip_pins = [l.strip() for l in (REPO / "requirements.txt").read_text().splitlines()
                if l.strip() and not l.startswith("#")]
    extras = [pin for pins in project["optional-dependencies"].values() for pin in pins]
    assert sorted(project["dependencies"] + extras) == sorted(pip_pins)


def test_control_base_models_without_any_base_model_is_a_config_error():
    with pytest.raises(ConfigError, match="sweep.control_base_models"):
        validate_config(tiny_config(validate=False, **{"sweep.base_models": ["st"], "sweep.controls": ["fgsm"],
                                                       "sweep.control_base_models": ["rb"]}))


@pytest.mark.parametrize("change", [
    {"train.eps_warmup_epochs": 5, "sweep.base_models": ["st"], "sweep.dense_finetune": []},  # no f_rb
    {"finetune.eps_warmup_epochs": 3, "sweep.finetune": ["none", "st"], "sweep.dense_finetune": []},  # no T_ad
    {"finetune.eps_warmup_epochs": 3, "sweep.finetune": ["none", "st"], "sweep.dense_finetune": [],
     "sweep.controls": ["scratch-full"], "sweep.control_base_models": ["st"]},  # scratch-full trains on `train`
    {"qat": {"init": "parent", "epochs": 2, "batch_size": 8, "lr": 0.1, "momentum": 0.0, "lr_drop_epoch": None,
             "lr_after_drop": 0.01, "eps_warmup_epochs": 2}, "sweep.qat_bits": [8], "sweep.qat_base_models": ["st"],
     "finetune.qat": {"lr": 0.01, "momentum": 0.9}},  # QAT of f_st trains without an attack
    {"figure2": {"enabled": False, "class_index": 12}},  # Figure 2 not drawn
    {"train.lr_drop_epoch": 1},
])
def test_settings_the_sweep_does_not_use_adversarially_are_not_refused(change):
    validate_config(tiny_config(validate=False, **change))


def test_the_class_counts_cover_every_dataset_of_the_schema():
    assert set(vocab.NUM_CLASSES) == set(load_schema()["properties"]["data"]["properties"]["name"]["enum"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_a_cuda_device_without_cuda_is_refused(device):
    with pytest.raises(ConfigError, match=f"config key device: '{device}'.*CUDA is not available"):
        check_device(device)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_mps_without_mps_is_refused():
    with pytest.raises(ConfigError, match="config key device: 'mps'.*MPS is not available"):
        check_device("mps")


def test_auto_on_a_machine_with_a_gpu_cuda_cannot_use_is_refused_before_any_job(monkeypatch):
    """The driver's device node says a GPU is here, CUDA says it is unusable: ``device: auto`` does not
    quietly run on the CPU; on a machine with no sign of a GPU it does."""
    from advfine.core import runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setattr(runtime, "NVIDIA_DEVICE_NODE", Path("/nonexistent/nvidia0"))
    check_device("auto")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(ConfigError, match=r"config key device: 'auto' found no usable CUDA device.*CUDA_VISIBLE"):
        check_device("auto")


def test_a_cuda_index_beyond_the_visible_gpus_is_refused(monkeypatch):
    """On a machine with one visible GPU (torch's view, faked here): cuda:0 and cuda pass, cuda:1 is refused
    naming the key and the count, before jobs run here and again when a (cluster) job starts."""
    from advfine.core.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for fine in ("auto", "cpu", "cuda", "cuda:0"):
        check_device(fine)
    with pytest.raises(ConfigError, match=r"config key device: 'cuda:1'.*1 CUDA device\(s\) are visible"):
        check_device("cuda:1")
    with pytest.raises(RuntimeError, match=r"'cuda:2'.*1 CUDA device"):
        resolve_device("cuda:2")


def test_the_configuration_reference_is_rendered_from_the_schema():
    """docs/configuration.md is what advfine.pipeline.config_reference renders: regenerate it after a schema change."""
    from advfine.pipeline.config_reference import render

    text = render()
    assert (REPO / "docs" / "configuration.md").read_text() == text, (
        "docs/configuration.md is stale: .venv/bin/python -m advfine.pipeline.config_reference > docs/configuration.md")
    schema = load_schema()
    for section in schema["required"]:
        assert f"`{section}" in text
    assert "| `train.grad_clip_norm` | number or null (> 0) | `null` |" in text
    assert "| `sweep.controls` | list of `\"fgsm\"`" in text
