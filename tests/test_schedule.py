"""The training schedule (advfine.core.schedule): read from a config section, its learning rate and eps
warm-up per epoch, and its checks, through the config path a user's config takes."""
import dataclasses

import pytest

from advfine.core.schedule import TrainSchedule, finetune_section
from advfine.pipeline.config import ConfigError

from conftest import tiny_config, train_settings


def schedule(**over) -> TrainSchedule:
    return train_settings(**({"epochs": 6, "batch_size": 32, "lr": 0.1, "momentum": 0.9, "lr_drop_epoch": 4,
                              "lr_after_drop": 0.01} | over))


def test_from_config_reads_every_key_of_a_train_section_with_its_defaults():
    section = tiny_config()["train"]
    built = TrainSchedule.from_config(section)
    assert dataclasses.asdict(built) == {key: section[key] for key in dataclasses.asdict(built)}
    assert list(dataclasses.asdict(built)) == [f.name for f in dataclasses.fields(TrainSchedule)]
    assert set(dataclasses.asdict(built)) == set(section)  # every key of the section is the schedule's
    assert schedule().weight_decay == 0.0 and schedule().grad_clip_norm is None and not schedule().augment


def test_a_finetuning_schedule_has_no_lr_drop_and_the_methods_lr():
    cfg = tiny_config(**{"finetune.scratch": {"eps_warmup_epochs": 1}})
    ft = TrainSchedule.from_config(finetune_section(cfg["finetune"], "prune"))
    assert ft.lr_drop_epoch is None and ft.lr_after_drop is None
    assert ft.lr == cfg["finetune"]["prune"]["lr"] and ft.epochs == cfg["finetune"]["epochs"]
    assert [ft.learning_rate(e) for e in range(3)] == [ft.lr] * 3
    assert TrainSchedule.from_config(finetune_section(cfg["finetune"], "prune", scratch=True)).eps_warmup_epochs == 1
    with pytest.raises(ValueError, match="finetune.bogus"):
        finetune_section(cfg["finetune"], "bogus")


def test_the_lr_drops_at_lr_drop_epoch_and_warms_up_per_step():
    assert [schedule().learning_rate(e) for e in range(6)] == [0.1] * 4 + [0.01] * 2
    warm = schedule(lr_warmup_epochs=1)
    assert [warm.learning_rate(0, b, 4) for b in range(4)] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert warm.learning_rate(1, 0, 4) == 0.1 and warm.learning_rate(5, 0, 4) == 0.01


def test_the_eps_fraction_rises_linearly_from_a_clean_first_epoch():
    assert [schedule(eps_warmup_epochs=4).eps_fraction(e) for e in range(6)] == [0, 0.25, 0.5, 0.75, 1, 1]
    assert schedule().eps_fraction(0) == 1.0


def test_the_checks_name_the_key():
    schedule().check_lr_drop()
    schedule(lr_drop_epoch=None).check_lr_drop()
    with pytest.raises(ValueError, match="^lr_drop_epoch: 6 is not before"):
        schedule(lr_drop_epoch=6).check_lr_drop()
    schedule(eps_warmup_epochs=5).check_eps_warmup("f_rb")
    with pytest.raises(ValueError, match="^eps_warmup_epochs: 6 .* f_rb never trains at the full eps"):
        schedule(eps_warmup_epochs=6).check_eps_warmup("f_rb")


def test_the_config_reports_a_schedule_check_as_its_key():
    with pytest.raises(ConfigError, match=r"^config key train\.lr_drop_epoch: 2 is not before"):
        tiny_config(**{"train.lr_drop_epoch": 2})
    with pytest.raises(ConfigError, match=r"^config key finetune\.eps_warmup_epochs: 1 is not below"):
        tiny_config(**{"finetune.eps_warmup_epochs": 1})
