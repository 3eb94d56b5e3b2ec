"""White-box attacks. Inputs live in [0, 1]; epsilon and step size are in pixel units."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


def pgd_linf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float,
             steps: int, random_start: bool = True, generator: torch.Generator | None = None,
             stop_on_success: bool = False, clamp: bool = True,
             start_noise: torch.Tensor | None = None) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy inside the L-inf ball of radius eps around x,
    intersected with the valid image range [0, 1] (Madry et al., 2018).

    The model is put in eval mode for the attack (so BatchNorm statistics and dropout do not move,
    unlike the paper's code) and restored afterwards. Gradients are taken with respect to the input
    only. Returns a detached tensor with |x_adv - x| <= eps and 0 <= x_adv <= 1 (``clamp=False``
    drops the [0, 1] constraint: only for reproducing the paper's reference code).

    With ``stop_on_success`` (for evaluation), a sample stops moving at the first iterate the model
    misclassifies, and that iterate is returned: any misclassified point in the ball proves the
    sample non-robust, so this is at least as strong as keeping the last iterate, and samples
    already broken cost nothing more.

    The random start is x + (2u - 1) * eps with u uniform in [0, 1), drawn from ``generator``, or
    taken from ``start_noise`` (u, shaped like x) when given: an evaluation draws u once per test
    sample, so a sample's attack does not depend on which other samples share its batch.
    """
    x = x.detach()
    if eps == 0 or steps == 0:
        return x.clone()
    was_training = model.training
    model.eval()
    try:
        if random_start:
            noise = start_noise if start_noise is not None else torch.rand(
                x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_adv = x + (2 * noise - 1) * eps
            if clamp:
                x_adv = x_adv.clamp(0.0, 1.0)
        else:
            x_adv = x.clone()
        lower, upper = x - eps, x + eps
        if clamp:
            lower, upper = lower.clamp(min=0.0), upper.clamp(max=1.0)
        active = torch.arange(len(x), device=x.device)  # samples still being attacked
        for _ in range(steps):
            x_active = x_adv[active].requires_grad_(True)
            logits = model(x_active)
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, y[active]), x_active)
            if stop_on_success:
                standing = logits.argmax(1) == y[active]
                active, x_active, grad = active[standing], x_active[standing], grad[standing]
                if len(active) == 0:
                    break
            moved = x_active.detach() + step_size * grad.sign()
            x_adv[active] = torch.max(torch.min(moved, upper[active]), lower[active])
    finally:
        model.train(was_training)
    return x_adv.detach()


# The paper's reference code (saintslab/Adver-Fine) adds the perturbation AFTER normalizing inputs with
# mean and std 0.5, so its "eps = 0.1" moves pixels by 0.1 * 0.5 = 0.05, and it never clamps to [0, 1].
PAPER_FAITHFUL_STD = 0.5
EPS_SPACES = ("pixel", "paper_faithful")


@dataclass(frozen=True)
class PGDAttack:
    """PGD-L-inf with fixed hyperparameters; ``attack(model, x, y)`` returns adversarial inputs.

    ``eps_space`` says what ``eps`` and ``step_size`` are measured in: ``pixel`` (correct and the
    default: inputs in [0, 1], adversarial images clamped to [0, 1]) or ``paper_faithful`` (the
    reference code's threat model: eps in normalized units, i.e. eps * 0.5 in pixels, no clamping)."""

    eps: float
    step_size: float
    steps: int
    random_start: bool = True
    stop_on_success: bool = False
    eps_space: str = "pixel"

    def __post_init__(self):
        if self.eps_space not in EPS_SPACES:
            raise ValueError(f"eps_space must be one of {EPS_SPACES}, got {self.eps_space!r}")

    @classmethod
    def from_config(cls, cfg: dict, eps_space: str = "pixel") -> "PGDAttack":
        return cls(eps=float(cfg["eps"]), step_size=float(cfg["step_size"]), steps=int(cfg["steps"]),
                   random_start=bool(cfg["random_start"]), eps_space=eps_space)

    def scaled(self, factor: float) -> "PGDAttack":
        """The same attack with eps and step size times ``factor`` (training's eps warm-up)."""
        return replace(self, eps=self.eps * factor, step_size=self.step_size * factor)

    @property
    def pixel_scale(self) -> float:
        return PAPER_FAITHFUL_STD if self.eps_space == "paper_faithful" else 1.0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator | None = None, start_noise: torch.Tensor | None = None) -> torch.Tensor:
        return pgd_linf(model, x, y, self.eps * self.pixel_scale, self.step_size * self.pixel_scale, self.steps,
                        self.random_start, generator, self.stop_on_success, clamp=self.eps_space == "pixel",
                        start_noise=start_noise)

    def describe(self) -> dict:
        return {"name": "pgd_linf", "eps": self.eps, "step_size": self.step_size, "steps": self.steps,
                "random_start": self.random_start, "stop_on_success": self.stop_on_success,
                "eps_space": self.eps_space, "eps_pixel": self.eps * self.pixel_scale,
                "step_size_pixel": self.step_size * self.pixel_scale,
                "clamped_to_valid_range": self.eps_space == "pixel"}
