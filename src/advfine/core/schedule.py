"""A training schedule: the epochs, batches, learning rate and warm-ups of one training run, read from its
config section in one place (``TrainSchedule.from_config``). Pure Python: the config checks use it at
parse time."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainSchedule:
    """What ``train.train_model`` runs: SGD for ``epochs`` epochs of ``batch_size`` images at
    ``learning_rate``, with momentum and weight decay; adversarial epochs at ``eps_fraction`` of the attack's
    eps; gradients clipped to ``grad_clip_norm`` (None: not clipped); batches augmented when ``augment``.
    The fields are the keys of the config's train schedules, in their order."""
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    lr_drop_epoch: int | None
    lr_after_drop: float | None
    eps_warmup_epochs: int
    lr_warmup_epochs: int
    grad_clip_norm: float | None
    augment: bool

    @classmethod
    def from_config(cls, section: dict) -> TrainSchedule:
        """The schedule of a config section with the schema's defaults filled in (``train``, ``qat``, or a
        fine-tuning arm's settings); other keys of the section (``qat.init``) are not the schedule's. A
        schedule without an lr drop (fine-tuning) may leave out ``lr_after_drop``."""
        clip = section["grad_clip_norm"]
        drop = section["lr_drop_epoch"]
        after = section["lr_after_drop"] if drop is not None else section.get("lr_after_drop")
        return cls(epochs=int(section["epochs"]), batch_size=int(section["batch_size"]), lr=float(section["lr"]),
                   momentum=float(section["momentum"]), weight_decay=float(section["weight_decay"]),
                   lr_drop_epoch=None if drop is None else int(drop),
                   lr_after_drop=None if after is None else float(after),
                   eps_warmup_epochs=int(section["eps_warmup_epochs"]),
                   lr_warmup_epochs=int(section["lr_warmup_epochs"]),
                   grad_clip_norm=None if clip is None else float(clip), augment=bool(section["augment"]))

    def learning_rate(self, epoch: int, batch: int = 0, n_batches: int = 1) -> float:
        """Step schedule: ``lr`` for the first ``lr_drop_epoch`` epochs, then ``lr_after_drop``
        (the paper: 0.1 for four epochs, then 0.01). No drop when lr_drop_epoch is None.
        With ``lr_warmup_epochs`` W > 0, batch ``batch`` of ``n_batches`` in epoch e < W trains at that lr times
        (e * n_batches + batch + 1) / (W * n_batches): a linear warm-up per step (Goyal et al. 2017)."""
        drop = self.lr_drop_epoch
        lr = self.lr_after_drop if drop is not None and epoch >= drop else self.lr
        warmup = self.lr_warmup_epochs
        if epoch >= warmup:
            return lr
        return lr * (epoch * n_batches + batch + 1) / (warmup * n_batches)

    def eps_fraction(self, epoch: int) -> float:
        """Linear epsilon warm-up: the share of the attack's eps that epoch ``epoch`` trains at,
        e / eps_warmup_epochs for epoch e < eps_warmup_epochs (epoch 0 clean), then 1."""
        if epoch >= self.eps_warmup_epochs:
            return 1.0
        return epoch / self.eps_warmup_epochs

    def check_lr_drop(self) -> None:
        """An lr drop inside the epochs. Raises ValueError starting with the key's name."""
        if self.lr_drop_epoch is not None and self.lr_drop_epoch >= self.epochs:
            raise ValueError(f"lr_drop_epoch: {self.lr_drop_epoch} is not before the end of training (epochs: "
                             f"{self.epochs}), so the lr never drops; set it below {self.epochs}, or null for no drop")

    def check_eps_warmup(self, who: str) -> None:
        """An eps warm-up that ends before the last epoch, for a schedule that ``who`` trains against an
        attack. Raises ValueError starting with the key's name."""
        if self.eps_warmup_epochs >= self.epochs:
            raise ValueError(f"eps_warmup_epochs: {self.eps_warmup_epochs} is not below epochs ({self.epochs}), "
                             f"so {who} never trains at the full eps (epoch e attacks at eps * e / "
                             f"{self.eps_warmup_epochs}, epoch 0 at none); set it below {self.epochs}")


def finetune_section(section: dict, method: str, scratch: bool = False) -> dict:
    """The schedule section of fine-tuning after compression ``method`` (dense, prune, ptq, qat), from the
    config's ``finetune`` section: its shared epochs, batch size, warm-ups, gradient clipping and augmentation
    with the method's own lr and momentum, no lr drop; for the from-scratch control (``scratch``),
    ``finetune.scratch``'s keys over the shared ones. Raises ValueError naming a missing method."""
    if method not in section:
        raise ValueError(f"config key finetune.{method}: missing (lr and momentum of fine-tuning after {method})")
    shared = ("epochs", "batch_size", "eps_warmup_epochs", "lr_warmup_epochs", "grad_clip_norm", "augment")
    settings = {**{key: section[key] for key in shared}, "lr_drop_epoch": None, **section[method]}
    return settings | section["scratch"] if scratch else settings
