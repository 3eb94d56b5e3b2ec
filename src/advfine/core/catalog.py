"""The names the core defines and the workflow speaks: the datasets and their classes, the attacks of the
evaluation suite in the order they run, and the checks of the audit. Pure Python (the Snakefile reads
them at parse time, through ``advfine.pipeline.vocab``)."""

# The datasets of config key data.name and their number of classes (datasets.load_dataset builds each
# with it; the config checks class indices against it at parse time).
NUM_CLASSES = {"digits": 10, "fashion_mnist": 10, "cifar10": 10}
# (channels, side) of each dataset's images; None: digits are resized to config key data.image_size
IMAGE_SHAPES = {"digits": (1, None), "fashion_mnist": (1, 28), "cifar10": (3, 32)}


def image_shape(name: str, image_size: int) -> tuple[int, int, int]:
    """(channels, height, width) of the images of dataset ``name`` (config keys data.name, data.image_size:
    the side digits are resized to)."""
    if name not in IMAGE_SHAPES:
        raise ValueError(f"config key data.name: unknown dataset {name!r}; known: {', '.join(IMAGE_SHAPES)}")
    channels, side = IMAGE_SHAPES[name]
    side = side or image_size
    return channels, side, side


# The attack suite of an evaluation, in the order it runs: white-box attacks on the model, the transfer
# attack from a fake-quantized model's float twin, the black-box Square attack (advfine.core.evaluate).
ATTACKS = ("pgd", "apgd_ce", "apgd_t", "fab_t", "transfer", "square")
WHITE_BOX_ATTACKS = ("pgd", "apgd_ce", "apgd_t", "fab_t")
# The audit's checks for signs of a failed attack (advfine.core.audit).
AUDIT_CHECKS = ("gradient_free_gain", "large_eps_standing", "more_effort_gain", "zero_gradient_share")
