"""White-box attacks. Inputs live in [0, 1]; epsilon and step size are in pixel units."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def pgd_linf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float,
             steps: int, random_start: bool = True, generator: torch.Generator | None = None,
             stop_on_success: bool = False) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy inside the L-inf ball of radius eps around x,
    intersected with the valid image range [0, 1] (Madry et al., 2018).

    The model is put in eval mode for the attack (so BatchNorm statistics and dropout do not move,
    unlike the paper's code) and restored afterwards. Gradients are taken with respect to the input
    only. Returns a detached tensor with |x_adv - x| <= eps and 0 <= x_adv <= 1.

    With ``stop_on_success`` (for evaluation), a sample stops moving at the first iterate the model
    misclassifies, and that iterate is returned: any misclassified point in the ball proves the
    sample non-robust, so this is at least as strong as keeping the last iterate, and samples
    already broken cost nothing more.
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


@dataclass(frozen=True)
class PGDAttack:
    """PGD-L-inf with fixed hyperparameters; ``attack(model, x, y)`` returns adversarial inputs."""

    eps: float
    step_size: float
    steps: int
    random_start: bool = True
    stop_on_success: bool = False

    @classmethod
    def from_config(cls, cfg: dict) -> "PGDAttack":
        return cls(eps=float(cfg["eps"]), step_size=float(cfg["step_size"]), steps=int(cfg["steps"]),
                   random_start=bool(cfg.get("random_start", True)))

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        return pgd_linf(model, x, y, self.eps, self.step_size, self.steps, self.random_start, generator,
                        self.stop_on_success)

    def describe(self) -> dict:
        return {"name": "pgd_linf", "eps": self.eps, "step_size": self.step_size, "steps": self.steps,
                "random_start": self.random_start, "stop_on_success": self.stop_on_success,
                "eps_space": "pixel"}
