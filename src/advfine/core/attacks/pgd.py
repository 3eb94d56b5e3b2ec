"""PGD (Madry et al. 2018) in a threat model's ball, the paper's attack, for training and evaluation. Inputs
live in [0, 1]; the step size is in pixel units."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from advfine.core.attacks.mode import attack_mode
from advfine.core.attacks.threat import PGDSettings, ThreatModel
from advfine.core.decision import correct


@dataclass(frozen=True)
class PGDAttack:
    """Projected gradient ascent on the cross-entropy inside ``threat`` (its eps-ball, intersected with [0, 1]
    unless unclamped), ``steps`` steps of ``step_size`` pixels; ``attack(model, x, y)`` returns adversarial
    inputs.

    The model is put in eval mode for the attack (so BatchNorm statistics and dropout do not move,
    unlike the paper's code) with its parameters frozen, and restored afterwards (``attack_mode``).
    Gradients are taken with respect to the input only.

    With ``stop_on_success`` (for evaluation), a sample stops moving at the first iterate the model
    misclassifies, and that iterate is returned: any misclassified point in the ball proves the
    sample non-robust, so this is at least as strong as keeping the last iterate, and samples
    already broken cost nothing more."""

    threat: ThreatModel
    step_size: float
    steps: int
    random_start: bool = True
    stop_on_success: bool = False

    @classmethod
    def from_config(cls, attack_cfg: dict, which: str) -> "PGDAttack":
        """The attack ``attack.<which>`` (train or eval) of the config's ``attack`` section, in its threat model
        (``PGDSettings.from_config``): every attack of a run, training's, the suite's, the audit's, the
        curve's and Figure 2's, is built here or derived from one built here."""
        settings = PGDSettings.from_config(attack_cfg, which)
        return cls(threat=settings.threat, step_size=settings.step_size, steps=settings.steps,
                   random_start=settings.random_start)

    def scaled(self, factor: float) -> "PGDAttack":
        """The same attack with eps and step size times ``factor`` (training's eps warm-up, the robustness
        curve)."""
        return replace(self, threat=self.threat.scaled(factor), step_size=self.step_size * factor)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator | None = None, start_noise: torch.Tensor | None = None) -> torch.Tensor:
        """Adversarial points for (x, y): detached, in the threat model. The random start (``random_start``)
        is drawn from ``generator``, or taken from ``start_noise`` (uniform u, shaped like x) when given: an
        evaluation draws u once per test sample, so a sample's attack does not depend on which other samples
        share its batch."""
        threat = self.threat
        x = x.detach()
        if threat.eps == 0 or self.steps == 0:
            return x.clone()
        with attack_mode(model):
            if self.random_start:
                noise = start_noise if start_noise is not None else torch.rand(
                    x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x_adv = threat.random_start(x, noise)
            else:
                x_adv = x.clone()
            active = torch.arange(len(x), device=x.device)  # samples still being attacked
            for _ in range(self.steps):
                x_active = x_adv[active].requires_grad_(True)
                logits = model(x_active)
                (grad,) = torch.autograd.grad(F.cross_entropy(logits, y[active]), x_active)
                if self.stop_on_success:
                    standing = correct(logits.detach(), y[active])
                    active, x_active, grad = active[standing], x_active[standing], grad[standing]
                    if len(active) == 0:
                        break
                moved = x_active.detach() + threat.ascent_step(grad, self.step_size)
                x_adv[active] = threat.project(moved, x[active])
        return x_adv.detach()

    def describe(self) -> dict:
        return {"name": f"pgd_{self.threat.norm}", "step_size": self.threat.to_config_units(self.step_size),
                "steps": self.steps, "random_start": self.random_start, "stop_on_success": self.stop_on_success,
                "step_size_pixel": self.step_size, **self.threat.describe()}
