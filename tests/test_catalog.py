"""The names and shapes the core defines (advfine.core.catalog), pure Python."""
import pytest

from advfine.core.catalog import NUM_CLASSES, image_shape


def test_image_shape_of_each_dataset():
    assert image_shape("fashion_mnist", 8) == (1, 28, 28)
    assert image_shape("cifar10", 8) == (3, 32, 32)
    assert image_shape("digits", 8) == (1, 8, 8) and image_shape("digits", 28) == (1, 28, 28)
    assert {name for name in NUM_CLASSES if image_shape(name, 16)} == set(NUM_CLASSES)
    with pytest.raises(ValueError, match="data.name: unknown dataset 'mnist'"):
        image_shape("mnist", 28)


def test_load_dataset_gives_images_of_the_catalog_shape():
    from advfine.core.datasets import load_dataset
    from advfine.pipeline.config import section_with_defaults

    data = load_dataset(section_with_defaults("data", {"name": "digits", "image_size": 12, "train_subset": 16,
                                                       "test_subset": 8}))
    assert tuple(data.train_x.shape[1:]) == image_shape("digits", 12) == tuple(data.test_x.shape[1:])
