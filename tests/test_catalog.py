"""The names and shapes the core defines (advfine.core.catalog), pure Python."""
import pytest

from advfine.core.catalog import ATTACKS, NUM_CLASSES, check_attack_suite, image_shape


def test_image_shape_of_each_dataset():
    assert image_shape({"name": "fashion_mnist", "image_size": 8}) == (1, 28, 28)
    assert image_shape({"name": "cifar10", "image_size": 8}) == (3, 32, 32)
    assert image_shape({"name": "digits", "image_size": 8}) == (1, 8, 8)
    assert image_shape({"name": "digits", "image_size": 28}) == (1, 28, 28)
    assert {name for name in NUM_CLASSES if image_shape({"name": name, "image_size": 16})} == set(NUM_CLASSES)
    with pytest.raises(ValueError, match="data.name: unknown dataset 'mnist'"):
        image_shape({"name": "mnist", "image_size": 28})


def test_load_dataset_gives_images_of_the_catalog_shape():
    from advfine.core.datasets import load_dataset
    from advfine.pipeline.config import section_with_defaults

    data = load_dataset(section_with_defaults("data", {"name": "digits", "image_size": 12, "train_subset": 16,
                                                       "test_subset": 8}))
    shape = image_shape({"name": "digits", "image_size": 12})
    assert tuple(data.train_x.shape[1:]) == shape == tuple(data.test_x.shape[1:])


@pytest.mark.parametrize("attacks", [("pgd",), ("pgd", "transfer"), ("pgd", "apgd_ce", "apgd_t", "fab_t", "transfer",
                                                                      "square")])
def test_an_attack_suite_starts_with_pgd_and_keeps_the_catalog_order(attacks):
    check_attack_suite(attacks)
    check_attack_suite(list(attacks))


@pytest.mark.parametrize("attacks", [(), ("apgd_ce",), ("apgd_ce", "pgd"), ("pgd", "square", "apgd_t"),
                                     ("pgd", "cw"), ("pgd", "pgd")])
def test_a_suite_out_of_order_or_with_unknown_attacks_is_refused_by_the_config_and_the_suite(attacks):
    from advfine.core.attacks.pgd import PGDAttack
    from advfine.core.attacks.threat import ThreatModel
    from advfine.core.evaluate import Suite
    from advfine.pipeline.config import ConfigError

    from conftest import tiny_config

    with pytest.raises(ValueError, match="starts with pgd"):
        check_attack_suite(attacks)
    with pytest.raises(ValueError, match="starts with pgd"):
        Suite(pgd=PGDAttack(ThreatModel("linf", 0.1), step_size=0.01, steps=3), attacks=attacks)
    if attacks and set(attacks) <= set(ATTACKS) and len(set(attacks)) == len(attacks):  # else the schema refuses
        with pytest.raises(ConfigError, match=r"^config key evaluate\.attacks: .*starts with pgd"):
            tiny_config(**{"evaluate.attacks": list(attacks)})
