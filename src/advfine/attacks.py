"""White-box attacks. Inputs live in [0, 1]; epsilon and step size are in pixel units."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def pgd_linf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float,
             steps: int, random_start: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy inside the L-inf ball of radius eps around x,
    intersected with the valid image range [0, 1] (Madry et al., 2018).

    The model is put in eval mode for the attack (so BatchNorm statistics and dropout do not move,
    unlike the paper's code) and restored afterwards. Gradients are taken with respect to the input
    only. Returns a detached tensor with |x_adv - x| <= eps and 0 <= x_adv <= 1.
    """
    x = x.detach()
    if eps == 0 or steps == 0:
        return x.clone()
    was_training = model.training
    model.eval()
    try:
        if random_start:
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_adv = (x + (2 * noise - 1) * eps).clamp(0.0, 1.0)
        else:
            x_adv = x.clone()
        lower, upper = (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = torch.max(torch.min(x_adv.detach() + step_size * grad.sign(), upper), lower)
    finally:
        model.train(was_training)
    return x_adv.detach()


@dataclass(frozen=True)
class PGDAttack:
    """PGD-L-inf with fixed hyperparameters; ``attack(model, x, y)`` returns adversarial inputs."""

    eps: float
    step_size: float
    steps: int
    random_start: bool = True

    @classmethod
    def from_config(cls, cfg: dict) -> "PGDAttack":
        return cls(eps=float(cfg["eps"]), step_size=float(cfg["step_size"]), steps=int(cfg["steps"]),
                   random_start=bool(cfg.get("random_start", True)))

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        return pgd_linf(model, x, y, self.eps, self.step_size, self.steps, self.random_start, generator)

    def describe(self) -> dict:
        return {"name": "pgd_linf", "eps": self.eps, "step_size": self.step_size, "steps": self.steps,
                "random_start": self.random_start, "eps_space": "pixel"}
