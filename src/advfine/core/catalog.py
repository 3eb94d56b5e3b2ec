"""The names the core defines and the workflow speaks: the datasets, their classes and the shape of their
images, the attacks of the evaluation suite in the order they run (and the check of a suite), and the checks
of the audit (and its large radius). Pure Python (the Snakefile reads them at parse time, through
``advfine.pipeline.vocab``)."""

# The datasets of config key data.name and their number of classes (datasets.load_dataset builds each
# with it; the config checks class indices against it at parse time).
NUM_CLASSES = {"digits": 10, "fashion_mnist": 10, "cifar10": 10}
# (channels, side) of each dataset's images; None: digits are resized to config key data.image_size
IMAGE_SHAPES = {"digits": (1, None), "fashion_mnist": (1, 28), "cifar10": (3, 32)}


def image_shape(data: dict) -> tuple[int, int, int]:
    """(channels, height, width) of the images of the config's ``data`` section: of dataset data.name,
    digits resized to data.image_size. The one reader of the pair (the dataset loader checks the images it
    loads against it, the config checks radii against it)."""
    name = data["name"]
    if name not in IMAGE_SHAPES:
        raise ValueError(f"config key data.name: unknown dataset {name!r}; known: {', '.join(IMAGE_SHAPES)}")
    channels, side = IMAGE_SHAPES[name]
    side = side or data["image_size"]
    return channels, side, side


# The attack suite of an evaluation, in the order it runs: white-box attacks on the model, the transfer
# attack from a fake-quantized model's float twin, the black-box Square attack (advfine.core.evaluate).
ATTACKS = ("pgd", "apgd_ce", "apgd_t", "fab_t", "transfer", "square")
WHITE_BOX_ATTACKS = ("pgd", "apgd_ce", "apgd_t", "fab_t")


def check_attack_suite(attacks) -> None:
    """An evaluation's attacks (config key evaluate.attacks): known ones, each once, starting with pgd (the
    paper's attack), in the order of ``ATTACKS``. Raises ValueError."""
    attacks = list(attacks)
    known = all(a in ATTACKS for a in attacks) and len(set(attacks)) == len(attacks)
    if not (attacks and attacks[0] == "pgd" and known and attacks == sorted(attacks, key=ATTACKS.index)):
        raise ValueError(f"{attacks}: the suite starts with pgd (the paper's attack) and runs some of "
                         f"{list(ATTACKS)} in that order")


def escalation_step_suite(step: dict) -> list[str]:
    """The attack list of the suite of an escalation step (config key evaluate.escalation.steps): the step's
    attacks behind pgd, which carries the threat model and does not run. Checked as a suite's (ValueError)."""
    attacks = ["pgd", *step["attacks"]]
    check_attack_suite(attacks)
    return attacks


# The audit's checks for signs of a failed attack (advfine.core.audit).
AUDIT_CHECKS = ("gradient_free_gain", "large_eps_standing", "more_effort_gain", "zero_gradient_share")
# What can make the evaluation escalate to stronger attacks (config key evaluate.escalation.when): the
# model is fake-quantized or binarized (piecewise constant), or an audit check flagged it.
ESCALATION_TRIGGERS = ("quantized", *AUDIT_CHECKS)


def audit_large_eps(audit_cfg: dict, norm: str) -> float:
    """The radius, in pixels, of the audit's ``large_eps_standing`` check in ``norm``: config key
    evaluate.audit.large_eps (L-inf) or large_eps_l2 (L2)."""
    return float(audit_cfg["large_eps"] if norm == "linf" else audit_cfg["large_eps_l2"])
