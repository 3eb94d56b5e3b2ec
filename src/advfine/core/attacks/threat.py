"""The threat model: the ball an attacker may move an image in (its norm and radius, in pixel units) and
whether images stay in [0, 1]. Every attack, training objective and check of an attack's points takes one;
the config's ``attack.norm``, ``attack.eps_space`` and ``attack.<train|eval>.eps`` are read here only, and
PGD's ``attack.<train|eval>.steps``, ``step_size`` and ``random_start`` too (``PGDSettings``). Pure Python:
the config checks build both at parse time, without torch."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # tensor methods only: the config checks build threat models at parse time, without torch
    import torch

NORMS = ("linf", "l2")
EPS_SPACES = ("pixel", "paper_faithful")
# The paper's reference code (saintslab/Adver-Fine) adds the perturbation AFTER normalizing inputs with
# mean and std 0.5, so its "eps = 0.1" moves pixels by 0.1 * 0.5 = 0.05, and it never clamps to [0, 1].
PAPER_FAITHFUL_STD = 0.5
BOUND_TOLERANCE = 1e-5  # float slack when checking that a point lies in the eps-ball


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample value shaped to broadcast over ``like`` (N, 1, 1, ...)."""
    return values.view(-1, *[1] * (like.dim() - 1))


def l2_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm of ``t`` (flattened), floored at 1e-12 so that it can divide."""
    return t.flatten(1).norm(dim=1).clamp_min(1e-12)


@dataclass(frozen=True)
class ThreatModel:
    """The eps-ball of ``norm`` (linf or l2) around each image, ``eps`` in pixel units (images live in [0, 1];
    normalization is inside the model), intersected with [0, 1] when ``clamp``.

    ``clamp=False`` is the paper-faithful space only: the reference code's threat model, which never clamps
    and measures lengths after normalizing with std 0.5. Its config and its records count eps and step
    sizes in those units (``to_pixels``, ``to_config_units``); the attacks see pixels only."""

    norm: str
    eps: float
    clamp: bool = True

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")

    @classmethod
    def from_config(cls, attack_cfg: dict, which: str) -> "ThreatModel":
        """The threat model of ``attack.<which>`` (train or eval) of the config's ``attack`` section: its eps in
        the space ``attack.eps_space``, in the norm ``attack.norm``."""
        space = attack_cfg["eps_space"]
        if space not in EPS_SPACES:
            raise ValueError(f"eps_space must be one of {EPS_SPACES}, got {space!r}")
        clamp = space == "pixel"
        unit = 1.0 if clamp else PAPER_FAITHFUL_STD
        return cls(norm=attack_cfg["norm"], eps=float(attack_cfg[which]["eps"]) * unit, clamp=clamp)

    @property
    def config_unit(self) -> float:
        """What one unit of the config's eps and step sizes is in pixels."""
        return 1.0 if self.clamp else PAPER_FAITHFUL_STD

    def to_pixels(self, length: float) -> float:
        """A length of the config (a step size) in pixels."""
        return length * self.config_unit

    def to_config_units(self, length: float) -> float:
        """A length in pixels in the config's units, as the records report eps and step sizes."""
        return length / self.config_unit

    @property
    def config_eps(self) -> float:
        """eps in the config's units, as the records report it."""
        return self.to_config_units(self.eps)

    def diameter(self, image_numel: int) -> float:
        """The largest radius that means something in this norm, in pixels: the diameter of the image cube
        [0, 1]^n of ``image_numel`` = C H W pixels (1 in L-inf, sqrt(n) in L2)."""
        return 1.0 if self.norm == "linf" else float(image_numel) ** 0.5

    def scaled(self, factor: float) -> "ThreatModel":
        """The same threat model with eps times ``factor`` (training's eps warm-up, the robustness curve)."""
        return replace(self, eps=self.eps * factor)

    def ascent_step(self, grad: torch.Tensor, step: float | torch.Tensor) -> torch.Tensor:
        """The steepest-ascent step of length ``step`` (pixels, or one per sample broadcast over ``grad``):
        step * sign(g) (L-inf), step * g / |g|_2 (L2)."""
        if self.norm == "linf":
            return step * grad.sign()
        return step * grad / per_sample(l2_norms(grad), grad)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x_adv`` projected onto the eps-ball around ``x`` and, when ``clamp``, into [0, 1] (clamping after
        the projection keeps the point in the ball: it only moves coordinates towards x)."""
        if self.norm == "linf":  # min and max select values exactly: no rounding from computing x + delta
            out = x_adv.maximum(x - self.eps).minimum(x + self.eps)
        else:
            delta = x_adv - x
            out = x + delta * per_sample((self.eps / l2_norms(delta)).clamp(max=1.0), delta)
        return out.clamp(0.0, 1.0) if self.clamp else out

    def random_start(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """A random point of the threat model around ``x`` from uniform ``noise`` in [0, 1) shaped like x:
        x + (2u - 1) * eps (L-inf, uniform in the cube), or x + eps * (2u - 1) / |2u - 1|_2 (L2, on the sphere
        of radius eps in a random direction), projected (into [0, 1] when clamped)."""
        t = 2 * noise - 1
        if self.norm == "linf":
            start = x + t * self.eps
        else:
            start = x + self.eps * t / per_sample(l2_norms(t), t)
        return self.project(start, x)

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per sample: does ``x_adv`` lie in the eps-ball around ``x`` (and in [0, 1] when clamped), up to
        ``BOUND_TOLERANCE``? Only such points count against a model."""
        delta = (x_adv - x).flatten(1)
        distance = delta.abs().amax(1) if self.norm == "linf" else delta.norm(dim=1)
        inside = distance <= self.eps + BOUND_TOLERANCE
        if self.clamp:
            points = x_adv.flatten(1)
            inside &= (points.amin(1) >= -BOUND_TOLERANCE) & (points.amax(1) <= 1 + BOUND_TOLERANCE)
        return inside

    def describe(self) -> dict:
        """The threat model's fields of an attack's record: the norm, eps in pixels and in the config's space."""
        return {"norm": self.norm, "eps": self.config_eps,
                "eps_space": "pixel" if self.clamp else "paper_faithful", "eps_pixel": self.eps,
                "clamped_to_valid_range": self.clamp}


@dataclass(frozen=True)
class PGDSettings:
    """The PGD attack of ``attack.<which>`` (train or eval): ``steps`` steps of ``step_size`` pixels inside
    ``threat``, from a random start when ``random_start``. ``PGDAttack.from_config`` builds the attack from
    these; the config checks build them without torch."""

    threat: ThreatModel
    step_size: float
    steps: int
    random_start: bool

    @classmethod
    def from_config(cls, attack_cfg: dict, which: str) -> "PGDSettings":
        """From the config's ``attack`` section (``ThreatModel.from_config`` reads the threat model)."""
        threat = ThreatModel.from_config(attack_cfg, which)
        cfg = attack_cfg[which]
        return cls(threat=threat, step_size=threat.to_pixels(float(cfg["step_size"])), steps=int(cfg["steps"]),
                   random_start=bool(cfg["random_start"]))

    def check_reach(self) -> None:
        """PGD's steps can reach the radius: ``step_size`` x ``steps`` >= eps (no steps: no attack, nothing
        to reach). Raises ValueError in the config's units."""
        threat = self.threat
        if self.steps > 0 and self.step_size * self.steps < threat.eps:
            reach = threat.to_config_units(self.step_size) * self.steps
            raise ValueError(f"step_size x steps = {reach:g} cannot reach eps {threat.config_eps:g}")
