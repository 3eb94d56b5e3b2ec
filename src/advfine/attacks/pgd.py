"""PGD, L-inf and L2, and the step, projection and random start the other attacks share. Inputs live in
[0, 1]; epsilon and step size are in pixel units."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


NORMS = ("linf", "l2")


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample value shaped to broadcast over ``like`` (N, 1, 1, ...)."""
    return values.view(-1, *[1] * (like.dim() - 1))


def l2_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm of ``t`` (flattened), floored at 1e-12 so that it can divide."""
    return t.flatten(1).norm(dim=1).clamp_min(1e-12)


def ascent_step(grad: torch.Tensor, step: float | torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent step of length ``step`` in ``norm``: step * sign(g) (L-inf), step * g / |g|_2 (L2)."""
    if norm == "linf":
        return step * grad.sign()
    return step * grad / _per_sample(l2_norms(grad), grad)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str, clamp: bool) -> torch.Tensor:
    """``x_adv`` projected onto the eps-ball around ``x`` in ``norm`` and, when ``clamp``, into [0, 1]
    (clamping after the projection keeps the point in the ball: it only moves coordinates towards x)."""
    if norm == "linf":  # min and max select values exactly: no rounding from computing x + delta
        out = torch.min(torch.max(x_adv, x - eps), x + eps)
    else:
        delta = x_adv - x
        out = x + delta * _per_sample(torch.clamp(eps / l2_norms(delta), max=1.0), delta)
    return out.clamp(0.0, 1.0) if clamp else out


def random_start(x: torch.Tensor, eps: float, norm: str, noise: torch.Tensor) -> torch.Tensor:
    """The random start from uniform ``noise`` in [0, 1) shaped like x: x + (2u - 1) * eps (L-inf, uniform in
    the cube), or x + eps * (2u - 1) / |2u - 1|_2 (L2, on the sphere of radius eps in a random direction)."""
    t = 2 * noise - 1
    if norm == "linf":
        return x + t * eps
    return x + eps * t / _per_sample(l2_norms(t), t)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float, steps: int,
        norm: str = "linf", random_start_: bool = True, generator: torch.Generator | None = None,
        stop_on_success: bool = False, clamp: bool = True, start_noise: torch.Tensor | None = None) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy inside the eps-ball around x in ``norm`` (L-inf or L2),
    intersected with the valid image range [0, 1] (Madry et al., 2018).

    The model is put in eval mode for the attack (so BatchNorm statistics and dropout do not move,
    unlike the paper's code) and restored afterwards. Gradients are taken with respect to the input
    only. Returns a detached tensor within eps of x and with 0 <= x_adv <= 1 (``clamp=False``
    drops the [0, 1] constraint: only for reproducing the paper's reference code).

    With ``stop_on_success`` (for evaluation), a sample stops moving at the first iterate the model
    misclassifies, and that iterate is returned: any misclassified point in the ball proves the
    sample non-robust, so this is at least as strong as keeping the last iterate, and samples
    already broken cost nothing more.

    The random start (``random_start``) is drawn from ``generator``, or taken from ``start_noise``
    (uniform u, shaped like x) when given: an evaluation draws u once per test sample, so a sample's
    attack does not depend on which other samples share its batch.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    x = x.detach()
    if eps == 0 or steps == 0:
        return x.clone()
    was_training = model.training
    model.eval()
    try:
        if random_start_:
            noise = start_noise if start_noise is not None else torch.rand(
                x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_adv = project(random_start(x, eps, norm, noise), x, eps, norm, clamp)
        else:
            x_adv = x.clone()
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
            moved = x_active.detach() + ascent_step(grad, step_size, norm)
            x_adv[active] = project(moved, x[active], eps, norm, clamp)
    finally:
        model.train(was_training)
    return x_adv.detach()


def pgd_linf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float,
             steps: int, random_start: bool = True, generator: torch.Generator | None = None,
             stop_on_success: bool = False, clamp: bool = True,
             start_noise: torch.Tensor | None = None) -> torch.Tensor:
    """PGD in the L-inf ball (``pgd`` with ``norm="linf"``): uniform random start in the cube, signed steps."""
    return pgd(model, x, y, eps, step_size, steps, "linf", random_start, generator, stop_on_success, clamp,
               start_noise)


# The paper's reference code (saintslab/Adver-Fine) adds the perturbation AFTER normalizing inputs with
# mean and std 0.5, so its "eps = 0.1" moves pixels by 0.1 * 0.5 = 0.05, and it never clamps to [0, 1].
PAPER_FAITHFUL_STD = 0.5
EPS_SPACES = ("pixel", "paper_faithful")


def pixel_scale(eps_space: str) -> float:
    """What one unit of eps is in pixels: 0.5 in the reference code's normalized space, else 1."""
    if eps_space not in EPS_SPACES:
        raise ValueError(f"eps_space must be one of {EPS_SPACES}, got {eps_space!r}")
    return PAPER_FAITHFUL_STD if eps_space == "paper_faithful" else 1.0


@dataclass(frozen=True)
class PGDAttack:
    """PGD with fixed hyperparameters in ``norm`` (linf or l2); ``attack(model, x, y)`` returns adversarial
    inputs.

    ``eps_space`` says what ``eps`` and ``step_size`` are measured in: ``pixel`` (correct and the
    default: inputs in [0, 1], adversarial images clamped to [0, 1]) or ``paper_faithful`` (the
    reference code's threat model: eps in normalized units, i.e. eps * 0.5 in pixels, no clamping)."""

    eps: float
    step_size: float
    steps: int
    random_start: bool = True
    stop_on_success: bool = False
    eps_space: str = "pixel"
    norm: str = "linf"

    def __post_init__(self):
        if self.eps_space not in EPS_SPACES:
            raise ValueError(f"eps_space must be one of {EPS_SPACES}, got {self.eps_space!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")

    @classmethod
    def from_config(cls, attack_cfg: dict, which: str) -> "PGDAttack":
        """The attack ``attack.<which>`` (train or eval) of the config's ``attack`` section, in its threat model
        (``attack.norm``, ``attack.eps_space``): every attack of a run, training's, the suite's, the audit's,
        the curve's and Figure 2's, is built here or derived from one built here."""
        cfg = attack_cfg[which]
        return cls(eps=float(cfg["eps"]), step_size=float(cfg["step_size"]), steps=int(cfg["steps"]),
                   random_start=bool(cfg["random_start"]), eps_space=attack_cfg["eps_space"],
                   norm=attack_cfg["norm"])

    def scaled(self, factor: float) -> "PGDAttack":
        """The same attack with eps and step size times ``factor`` (training's eps warm-up)."""
        return replace(self, eps=self.eps * factor, step_size=self.step_size * factor)

    @property
    def pixel_scale(self) -> float:
        return pixel_scale(self.eps_space)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 generator: torch.Generator | None = None, start_noise: torch.Tensor | None = None) -> torch.Tensor:
        return pgd(model, x, y, self.eps * self.pixel_scale, self.step_size * self.pixel_scale, self.steps,
                   self.norm, self.random_start, generator, self.stop_on_success, clamp=self.eps_space == "pixel",
                   start_noise=start_noise)

    def describe(self) -> dict:
        return {"name": f"pgd_{self.norm}", "norm": self.norm, "eps": self.eps, "step_size": self.step_size, "steps": self.steps,
                "random_start": self.random_start, "stop_on_success": self.stop_on_success,
                "eps_space": self.eps_space, "eps_pixel": self.eps * self.pixel_scale,
                "step_size_pixel": self.step_size * self.pixel_scale,
                "clamped_to_valid_range": self.eps_space == "pixel"}
