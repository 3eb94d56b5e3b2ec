"""Config validation: the schema and the cross-field checks reject bad values, naming the key."""
import copy
from pathlib import Path

import pytest
import yaml

from advfine.config import ConfigError, stage_config, validate_config

from conftest import REPO, tiny_config


SHIPPED = [REPO / "config.yaml", *sorted((REPO / "configs").glob("*.yaml"))]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_the_shipped_configs_are_valid(path):
    validate_config(yaml.safe_load(path.read_text()))


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
    ({"sweep.qat_bits": [8]}, "compress.qat"),
    ({"attack.eps_space": "normalized"}, "attack.eps_space"),
    ({"model.arch": "vgg16"}, "model.arch"),
    ({"data.name": "cifar100"}, "data.name"),
    ({"compress.qat": {"init": "random", "epochs": 1, "batch_size": 8, "lr": 0.1, "momentum": 0.0,
                       "lr_drop_epoch": None, "lr_after_drop": 0.01}}, "compress.qat.init"),
    ({"compress.qat": {"init": "scratch", "epochs": 1, "batch_size": 8, "lr": 0.1, "momentum": 0.0,
                       "lr_drop_epoch": None, "lr_after_drop": 0.01, "bogus": 1}}, "bogus"),
    ({"report.figure2": {"enabled": True, "class_index": 8, "n_images": 10}, "sweep.finetune": ["none"]},
     "report.figure2.enabled"),
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
]


@pytest.mark.parametrize("change,key", BAD, ids=[k for _, k in BAD])
def test_bad_values_are_rejected_naming_the_key(change, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(tiny_config(**change))


def test_a_missing_key_is_named():
    cfg = tiny_config()
    del cfg["train"]["lr"]
    with pytest.raises(ConfigError, match="'lr' is a required property"):
        validate_config(cfg)


def test_stage_config_holds_only_what_the_stage_reads():
    cfg = tiny_config()
    train = stage_config(cfg, "train_base")
    assert set(train) == {"model", "attack", "train"} and set(train["attack"]) == {"train"}
    paper = yaml.safe_load((REPO / "configs" / "paper-fmnist.yaml").read_text())
    assert set(stage_config(paper, "train_base")["attack"]) == {"eps_space", "train"}
    assert stage_config(paper, "compress") == {"compress": {"calibration_batches": 16,
                                                            "calibration_batch_size": 64}}
    more_seeds = copy.deepcopy(cfg)
    more_seeds["sweep"]["seeds"] = [0, 1, 2]
    for stage in ("prepare_data", "train_base", "compress", "qat", "finetune", "evaluate", "features"):
        assert stage_config(more_seeds, stage) == stage_config(cfg, stage)


def test_conda_env_pins_equal_the_pip_requirements():
    pip_pins = [l.strip() for l in (REPO / "requirements.txt").read_text().splitlines()
                if l.strip() and not l.startswith("#")]
    env = yaml.safe_load((REPO / "envs" / "advfine.yaml").read_text())
    conda_pins = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(conda_pins) == sorted(pip_pins)
    assert all("==" in pin for pin in pip_pins)
