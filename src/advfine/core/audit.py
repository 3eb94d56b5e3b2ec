"""Checks that an evaluation's attacks did not fail (Carlini et al. 2019, "On evaluating adversarial
robustness"; Pintor et al. 2022, "Indicators of attack failure"), run on every evaluated node. Each
check measures one number and raises a flag when it crosses its threshold (config ``evaluate.audit``):

* ``gradient_free_gain``: the transfer or black-box attack broke samples every white-box attack
  missed (share of the test set). Gradient attacks should find what a gradient-free one finds; when
  they do not, the model's gradient misleads them (gradient masking, e.g. rounding).
* ``large_eps_standing``: APGD-CE at a large radius (L-inf: default 0.5, half the pixel range; L2:
  ``large_eps_l2``, default 10) leaves
  samples standing. Any working attack brings a classifier near 0 % there; samples standing mean
  the attack, not the model, failed. Only the samples the suite left standing at eps are attacked:
  the balls are nested, so the suite's point breaks the others at the large radius too.
* ``more_effort_gain``: APGD-CE with more steps and restarts breaks samples the suite left standing
  (on a fixed random subset of at most ``more_effort_samples`` of them, scaled to the test set). A
  converged evaluation does not move when attacked harder.
* ``zero_gradient_share``: the share of clean-correct samples whose input gradient of the margin
  loss is exactly zero (the margin, unlike the cross-entropy, does not saturate on a confident model,
  so a zero gradient means the model's backward pass passes nothing: a rounding step, say).
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from advfine.core.attacks.apgd import apgd
from advfine.core.attacks.threat import ThreatModel
from advfine.core.catalog import AUDIT_CHECKS, audit_large_eps
from advfine.core.decision import correct, margin
from advfine.core.evaluate import WHITE_BOX, Suite, start_noise_for
from advfine.core.runtime import make_generator, to_device

CHECKS = AUDIT_CHECKS


def _apgd_survivors(model: nn.Module, x: torch.Tensor, y: torch.Tensor, candidates: torch.Tensor,
                    threat: ThreatModel, steps: int, restarts: int, batch_size: int, device: torch.device,
                    generator: torch.Generator) -> torch.Tensor:
    """Candidates still classified correctly after APGD-CE (``restarts`` runs) in ``threat``."""
    standing = candidates.clone()
    for _ in range(restarts):
        noise = start_noise_for(x, generator)
        for part in standing.nonzero().flatten().split(batch_size):
            xb, yb = to_device(x[part], device), to_device(y[part], device)
            x_adv, _ = apgd(model, xb, yb, threat, steps, "ce", start_noise=to_device(noise[part], device))
            with torch.no_grad():
                fooled = ~correct(model(x_adv), yb) & threat.contains(x_adv, xb)
            standing[part[fooled.cpu()]] = False
    return standing


def zero_gradient_share(model: nn.Module, x: torch.Tensor, y: torch.Tensor, candidates: torch.Tensor,
                        batch_size: int, device: torch.device) -> float:
    """Share of the candidates whose input gradient of the margin z_y - max_{i != y} z_i is all zero."""
    idx = candidates.nonzero().flatten()
    if len(idx) == 0:
        return 0.0
    zero = 0
    model.eval()
    for part in idx.split(batch_size):
        xb = to_device(x[part], device).requires_grad_(True)
        (grad,) = torch.autograd.grad(margin(model(xb), to_device(y[part], device)).sum(), xb)
        zero += int((grad.flatten(1).abs().amax(1) == 0).sum())
    return zero / len(idx)


def audit_evaluation(model: nn.Module, x: torch.Tensor, y: torch.Tensor, result: dict, suite: Suite,
                     settings: dict, batch_size: int, device: torch.device, seed: int) -> dict:
    """The checks of the module docstring for one evaluated model. ``result`` is ``evaluate_model``'s
    (its per-sample outcome and attack records); ``settings`` the config's ``evaluate.audit``.
    Returns {"checks": {name: value}, "thresholds": {...}, "flags": [names over threshold]}."""
    n = len(y)
    clean_ok = result["per_sample"]["clean_ok"]
    robust_ok = clean_ok & (result["per_sample"]["broken_by"] < 0)
    attacks = result["attacks"]
    generator = make_generator(seed, torch.device("cpu"))
    gradient_free = sum(record["broken"] for name, record in attacks.items() if name not in WHITE_BOX)
    threat = suite.threat
    large_eps = audit_large_eps(settings, threat.norm)
    standing_large = _apgd_survivors(model, x, y, robust_ok, replace(threat, eps=large_eps), suite.apgd_steps, 1,
                                     batch_size, device, generator)
    survivors = robust_ok.nonzero().flatten()
    picked = survivors[torch.randperm(len(survivors), generator=generator)[: settings["more_effort_samples"]]]
    subset = torch.zeros_like(robust_ok)
    subset[picked] = True
    harder = _apgd_survivors(model, x, y, subset, threat, suite.apgd_steps * settings["more_steps_factor"],
                             settings["more_restarts"], batch_size, device, generator)
    broken_share = (subset & ~harder).float().sum().item() / max(len(picked), 1)
    checks = {"gradient_free_gain": gradient_free / n,
              "large_eps_standing": standing_large.float().mean().item(),
              "more_effort_gain": broken_share * len(survivors) / n,
              "zero_gradient_share": zero_gradient_share(model, x, y, clean_ok, batch_size, device)}
    thresholds = {"gradient_free_gain": settings["tolerance"], "large_eps_standing": settings["large_eps_max_standing"],
                  "more_effort_gain": settings["tolerance"], "zero_gradient_share": settings["zero_gradient_max_share"]}
    return {"checks": checks, "thresholds": thresholds, "large_eps": large_eps, "norm": threat.norm,
            "flags": [name for name in CHECKS if checks[name] > thresholds[name]]}
