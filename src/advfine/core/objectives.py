"""Adversarial training objectives beside PGD training (Madry et al. 2018, ``attacks.pgd.PGDAttack``):
how a training batch becomes a loss. Used by base training and by the fine-tuning modes.

* FGSM with a random start, FGSM-RS (Wong et al. 2020, "Fast is better than free"): a uniform start in
  the eps-ball, one signed-gradient step of 1.25 eps, projected back to the ball. That is PGD with one
  step, so it is a ``PGDAttack`` (``fgsm_rs``), not new code.
* N-FGSM (de Jorge et al. 2022, "Make some noise"): a uniform start in a ball twice as large (2 eps), one
  signed-gradient step of eps, and no projection to the eps-ball: the training point may lie up to
  3 eps away. The paper shows the projection, not the single step, causes catastrophic overfitting.
* TRADES (Zhang et al. 2019): cross-entropy on the clean batch plus beta times the KL divergence between
  the model's outputs on the clean and on the perturbed batch; the perturbation maximizes that KL with
  PGD from a small Gaussian start (the reference code's 0.001 N(0, 1)).

Each objective has ``threat`` (its ``ThreatModel``), ``steps`` (gradient steps per batch, for the MACs
estimate), ``scaled(f)`` (the eps warm-up) and ``describe()``; PGD-style ones are called as
``attack(model, x, y, generator)`` and return the training points, TRADES has ``loss(model, x, y, generator)``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from advfine.core.attacks.mode import attack_mode
from advfine.core.attacks.pgd import PGDAttack
from advfine.core.attacks.threat import ThreatModel

FGSM_RS_STEP = 1.25      # Wong et al.: alpha = 1.25 eps
N_FGSM_NOISE = 2.0       # de Jorge et al.: noise in [-2 eps, 2 eps], step eps, no projection
TRADES_START_STD = 0.001  # the TRADES reference code's start: x + 0.001 N(0, 1)


def fgsm_rs(threat: ThreatModel, step_factor: float = FGSM_RS_STEP) -> PGDAttack:
    """FGSM-RS as one PGD step of ``step_factor * eps`` from a uniform random start, projected."""
    return PGDAttack(threat=threat, step_size=step_factor * threat.eps, steps=1, random_start=True)


@dataclass(frozen=True)
class NFGSMAttack:
    """N-FGSM: x + n + step * sign(grad at x + n), n uniform in [-noise_factor * eps, noise_factor * eps]
    per pixel, clamped to [0, 1] when the L-inf ``threat`` is, never projected to its eps-ball;
    ``step_size`` in pixels."""

    threat: ThreatModel
    step_size: float
    noise_factor: float = N_FGSM_NOISE
    steps: int = 1

    def __post_init__(self):
        if self.threat.norm != "linf":
            raise ValueError(f"N-FGSM is an L-inf method (one signed-gradient step); the threat model is "
                             f"{self.threat.norm}")

    def scaled(self, factor: float) -> "NFGSMAttack":
        return replace(self, threat=self.threat.scaled(factor), step_size=self.step_size * factor)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        clamp = self.threat.clamp
        x = x.detach()
        with attack_mode(model):
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_noisy = x + (2 * noise - 1) * self.noise_factor * self.threat.eps
            if clamp:
                x_noisy = x_noisy.clamp(0.0, 1.0)
            x_noisy.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x_noisy), y), x_noisy)
            x_adv = x_noisy.detach() + self.threat.ascent_step(grad, self.step_size)
            return (x_adv.clamp(0.0, 1.0) if clamp else x_adv).detach()

    def describe(self) -> dict:
        # the threat model's fields but its norm: N-FGSM is L-inf only
        threat = {key: value for key, value in self.threat.describe().items() if key != "norm"}
        return {"name": "n_fgsm", "step_size": self.threat.to_config_units(self.step_size),
                "noise_factor": self.noise_factor, "steps": self.steps, "projected_to_eps_ball": False, **threat}


@dataclass(frozen=True)
class TradesObjective:
    """TRADES: CE(f(x), y) + beta * KL(f(x) || f(x')), x' = argmax of the KL in the eps-ball (``inner``'s threat
    model, step size and steps; PGD on the KL from x + 0.001 N(0, 1), projected like ``inner``)."""

    inner: PGDAttack
    beta: float = 6.0

    @property
    def threat(self) -> ThreatModel:
        return self.inner.threat

    @property
    def steps(self) -> int:
        return self.inner.steps

    def scaled(self, factor: float) -> "TradesObjective":
        return replace(self, inner=self.inner.scaled(factor))

    def perturb(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The point of largest KL divergence from the clean output (the model in eval mode, as the
        reference code)."""
        threat, step = self.inner.threat, self.inner.step_size
        x = x.detach()
        with attack_mode(model):
            with torch.no_grad():
                clean = F.softmax(model(x), dim=1)
            start = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_adv = threat.project(x + TRADES_START_STD * start, x)
            for _ in range(self.inner.steps):
                x_adv.requires_grad_(True)
                kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), clean, reduction="sum")
                (grad,) = torch.autograd.grad(kl, x_adv)
                x_adv = threat.project(x_adv.detach() + threat.ascent_step(grad, step), x)
            return x_adv.detach()

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(the TRADES loss of the batch, the clean logits) with the model in train mode."""
        x_adv = self.perturb(model, x, generator)
        model.train()
        logits = model(x)
        robust = F.kl_div(F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        return F.cross_entropy(logits, y) + self.beta * robust, logits

    def describe(self) -> dict:
        return {"name": "trades", "beta": self.beta, "inner": self.inner.describe(),
                "eps": self.threat.config_eps, "steps": self.inner.steps}


def objective_for(mode: str, pgd: PGDAttack, settings: dict) -> PGDAttack | NFGSMAttack | TradesObjective:
    """The adversarial objective of training mode ``mode`` (``ad``: PGD as ``pgd``; ``fgsm``: FGSM-RS,
    ``nfgsm``: N-FGSM, ``trades``: TRADES with ``pgd`` as its inner maximization) in ``pgd``'s threat model.
    ``settings``: the config's ``adversarial`` section (step factors, TRADES beta)."""
    if mode == "ad":
        return pgd
    threat = pgd.threat
    if mode in ("fgsm", "nfgsm") and threat.norm != "linf":
        raise ValueError(f"{mode} is an L-inf method (one signed-gradient step); the threat model is {threat.norm}")
    if mode == "fgsm":
        return fgsm_rs(threat, settings["fgsm_step_factor"])
    if mode == "nfgsm":
        return NFGSMAttack(threat=threat, step_size=settings["nfgsm_step_factor"] * threat.eps,
                           noise_factor=settings["nfgsm_noise_factor"])
    if mode == "trades":
        return TradesObjective(inner=pgd, beta=float(settings["trades_beta"]))
    raise ValueError(f"no adversarial objective for mode {mode!r}; known: ad, fgsm, nfgsm, trades")
