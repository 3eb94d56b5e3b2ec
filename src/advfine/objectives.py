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

Each objective has ``eps``, ``steps`` (gradient steps per batch, for the MACs estimate), ``scaled(f)``
(the eps warm-up) and ``describe()``; PGD-style ones are called as ``attack(model, x, y, generator)``
and return the training points, TRADES has ``loss(model, x, y, generator)``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .attacks.pgd import PGDAttack, ascent_step, pixel_scale, project

FGSM_RS_STEP = 1.25      # Wong et al.: alpha = 1.25 eps
N_FGSM_NOISE = 2.0       # de Jorge et al.: noise in [-2 eps, 2 eps], step eps, no projection
TRADES_START_STD = 0.001  # the TRADES reference code's start: x + 0.001 N(0, 1)


def fgsm_rs(eps: float, eps_space: str = "pixel", step_factor: float = FGSM_RS_STEP) -> PGDAttack:
    """FGSM-RS as one PGD step of ``step_factor * eps`` from a uniform random start, projected."""
    return PGDAttack(eps=eps, step_size=step_factor * eps, steps=1, random_start=True, eps_space=eps_space)


@dataclass(frozen=True)
class NFGSMAttack:
    """N-FGSM: x + n + step * sign(grad at x + n), n uniform in [-noise_factor * eps, noise_factor * eps]
    per pixel, clamped to [0, 1] in the pixel eps space, never projected to the eps-ball."""

    eps: float
    step_size: float
    noise_factor: float = N_FGSM_NOISE
    eps_space: str = "pixel"
    steps: int = 1

    def __post_init__(self):
        pixel_scale(self.eps_space)

    def scaled(self, factor: float) -> "NFGSMAttack":
        return replace(self, eps=self.eps * factor, step_size=self.step_size * factor)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        scale = pixel_scale(self.eps_space)
        clamp = self.eps_space == "pixel"
        x = x.detach()
        was_training = model.training
        model.eval()
        try:
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_noisy = x + (2 * noise - 1) * self.noise_factor * self.eps * scale
            if clamp:
                x_noisy = x_noisy.clamp(0.0, 1.0)
            x_noisy.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x_noisy), y), x_noisy)
            x_adv = x_noisy.detach() + self.step_size * scale * grad.sign()
            return (x_adv.clamp(0.0, 1.0) if clamp else x_adv).detach()
        finally:
            model.train(was_training)

    def describe(self) -> dict:
        scale = pixel_scale(self.eps_space)
        return {"name": "n_fgsm", "eps": self.eps, "step_size": self.step_size, "noise_factor": self.noise_factor,
                "steps": self.steps, "eps_space": self.eps_space, "eps_pixel": self.eps * scale,
                "projected_to_eps_ball": False, "clamped_to_valid_range": self.eps_space == "pixel"}


@dataclass(frozen=True)
class TradesObjective:
    """TRADES: CE(f(x), y) + beta * KL(f(x) || f(x')), x' = argmax of the KL in the eps-ball (``inner``'s eps,
    step size, steps and norm; PGD on the KL from x + 0.001 N(0, 1), projected and clamped like ``inner``)."""

    inner: PGDAttack
    beta: float = 6.0

    @property
    def eps(self) -> float:
        return self.inner.eps

    @property
    def steps(self) -> int:
        return self.inner.steps

    def scaled(self, factor: float) -> "TradesObjective":
        return replace(self, inner=self.inner.scaled(factor))

    def perturb(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The point of largest KL divergence from the clean output (the model in eval mode, as the
        reference code)."""
        scale = self.inner.pixel_scale
        eps, step = self.inner.eps * scale, self.inner.step_size * scale
        clamp = self.inner.eps_space == "pixel"
        x = x.detach()
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                clean = F.softmax(model(x), dim=1)
            start = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            norm = self.inner.norm
            x_adv = project(x + TRADES_START_STD * start, x, eps, norm, clamp)
            for _ in range(self.inner.steps):
                x_adv.requires_grad_(True)
                kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), clean, reduction="sum")
                (grad,) = torch.autograd.grad(kl, x_adv)
                x_adv = project(x_adv.detach() + ascent_step(grad, step, norm), x, eps, norm, clamp)
            return x_adv.detach()
        finally:
            model.train(was_training)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(the TRADES loss of the batch, the clean logits) with the model in train mode."""
        x_adv = self.perturb(model, x, generator)
        model.train()
        logits = model(x)
        robust = F.kl_div(F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        return F.cross_entropy(logits, y) + self.beta * robust, logits

    def describe(self) -> dict:
        return {"name": "trades", "beta": self.beta, "inner": self.inner.describe(), "eps": self.inner.eps,
                "steps": self.inner.steps}


def objective_for(mode: str, pgd: PGDAttack, settings: dict) -> PGDAttack | NFGSMAttack | TradesObjective:
    """The adversarial objective of training mode ``mode`` (``ad``: PGD as ``pgd``; ``fgsm``: FGSM-RS,
    ``nfgsm``: N-FGSM, ``trades``: TRADES with ``pgd`` as its inner maximization) at ``pgd``'s eps and eps
    space. ``settings``: the config's ``adversarial`` section (step factors, TRADES beta)."""
    if mode == "ad":
        return pgd
    if mode in ("fgsm", "nfgsm") and pgd.norm != "linf":
        raise ValueError(f"{mode} is an L-inf method (one signed-gradient step); the threat model is {pgd.norm}")
    if mode == "fgsm":
        return fgsm_rs(pgd.eps, pgd.eps_space, settings["fgsm_step_factor"])
    if mode == "nfgsm":
        return NFGSMAttack(eps=pgd.eps, step_size=settings["nfgsm_step_factor"] * pgd.eps,
                           noise_factor=settings["nfgsm_noise_factor"], eps_space=pgd.eps_space)
    if mode == "trades":
        return TradesObjective(inner=pgd, beta=float(settings["trades_beta"]))
    raise ValueError(f"no adversarial objective for mode {mode!r}; known: ad, fgsm, nfgsm, trades")
