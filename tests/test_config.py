"""Config validation: the schema and the cross-field checks reject bad values, naming the key."""
import copy
from pathlib import Path

import pytest
import yaml

from advfine.config import ConfigError, stage_config, validate_config

from conftest import REPO, tiny_config


def test_the_shipped_configs_are_valid():
    validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
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
    ({"sweep.ptq_bits": [1]}, "sweep.ptq_bits.0"),
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
    more_seeds = copy.deepcopy(cfg)
    more_seeds["sweep"]["seeds"] = [0, 1, 2]
    for stage in ("prepare_data", "train_base", "compress", "finetune", "evaluate"):
        assert stage_config(more_seeds, stage) == stage_config(cfg, stage)


def test_conda_env_pins_equal_the_pip_requirements():
    pip_pins = [l.strip() for l in (REPO / "requirements.txt").read_text().splitlines()
                if l.strip() and not l.startswith("#")]
    env = yaml.safe_load((REPO / "envs" / "advfine.yaml").read_text())
    conda_pins = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(conda_pins) == sorted(pip_pins)
    assert all("==" in pin for pin in pip_pins)
