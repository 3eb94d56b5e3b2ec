"""APGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks"), L-infinity and L2: PGD with momentum whose step size halves at checkpoints where
the loss stopped rising, restarting each halving from the best point so far. APGD-CE ascends the
cross-entropy; APGD-T the targeted DLR loss (the difference of the true and the target logit, scaled
by the spread of the top logits, so it is invariant to the logits' scale and cannot saturate the way
the cross-entropy does on a confident model).

Written here, after the authors' reference code (auto-attack, ``autopgd_base.py``): the official
package is not on PyPI, and torchattacks' APGD/APGDT defaults differ from AutoAttack's (10 steps, not
100; torchattacks issue #196). tests/test_attacks.py checks this one against torchattacks' on the same
model. One difference from the reference code, for speed only: a sample leaves the batch as soon as an
iterate fools the model (that point proves it non-robust), so its remaining steps are not computed;
every sample's trajectory is otherwise the reference's (all its state is per sample).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from advfine.core.attacks.mode import attack_mode
from advfine.core.attacks.threat import ThreatModel, per_sample
from advfine.core.decision import correct

RHO = 0.75  # a checkpoint halves the step when the loss rose in fewer than rho of the steps since the last


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Untargeted DLR loss per sample: -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)."""
    z_sorted, ind_sorted = logits.sort(dim=1)
    top_is_true = (ind_sorted[:, -1] == y).float()
    u = torch.arange(len(y), device=logits.device)
    best_other = z_sorted[:, -2] * top_is_true + z_sorted[:, -1] * (1.0 - top_is_true)
    return -(logits[u, y] - best_other) / (z_sorted[:, -1] - z_sorted[:, -3] + 1e-12)


def dlr_loss_targeted(logits: torch.Tensor, y: torch.Tensor, y_target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR loss per sample: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)."""
    z_sorted, _ = logits.sort(dim=1)
    u = torch.arange(len(y), device=logits.device)
    return -(logits[u, y] - logits[u, y_target]) / (z_sorted[:, -1] - 0.5 * (z_sorted[:, -3] + z_sorted[:, -4]) + 1e-12)


def _checkpoint_lengths(steps: int) -> tuple[int, int, int]:
    """The first checkpoint interval (0.22 of the steps), its decrease per checkpoint (0.03) and its
    minimum (0.06), as in the reference code."""
    return max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, steps: int, loss: str = "ce",
         y_target: torch.Tensor | None = None, generator: torch.Generator | None = None, rho: float = RHO,
         start_noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One APGD run from a random start in ``threat``'s ball. ``loss`` is ``ce``, ``dlr`` or ``dlr-targeted``
    (then ``y_target`` per sample). The start is drawn from ``generator``, or taken from ``start_noise``
    (uniform in [0, 1), shaped like ``x``: an evaluation draws it once per test sample).
    Returns ``(x_adv, fooled)``: for a fooled sample the first iterate that fooled the model, else the
    point of highest loss; ``fooled`` is a boolean per sample. The model is evaluated in eval mode with
    its parameters frozen (``attack_mode``); x_adv lies in the threat model."""
    with attack_mode(model):
        return _apgd(model, x.detach(), y, threat, steps, loss, y_target, generator, rho, start_noise)


def _loss_fn(loss: str):
    if loss == "ce":
        return lambda logits, y, t: F.cross_entropy(logits, y, reduction="none")
    if loss == "dlr":
        return lambda logits, y, t: dlr_loss(logits, y)
    if loss == "dlr-targeted":
        return dlr_loss_targeted
    raise ValueError(f"unknown APGD loss {loss!r}; known: ce, dlr, dlr-targeted")


def _apgd(model, x, y, threat, steps, loss, y_target, generator, rho, start_noise):
    criterion = _loss_fn(loss)
    if loss == "dlr-targeted" and y_target is None:
        raise ValueError("APGD with the targeted DLR loss needs y_target")
    n = len(x)
    target = y_target if y_target is not None else y
    u = start_noise if start_noise is not None else torch.rand(x.shape, generator=generator, device=x.device,
                                                                dtype=x.dtype)
    eps = threat.eps
    if threat.norm == "linf":
        # start at a random point of the ball's surface region: t scaled so that max |t| = 1 per sample
        t = 2 * u - 1
        x_adv = threat.project(x + eps * t / per_sample(t.flatten(1).abs().amax(1).clamp(min=1e-12), x), x)
    else:  # on the sphere of radius eps (the reference code draws a Gaussian direction; any random one will do)
        x_adv = threat.random_start(x, u)
    result = x_adv.clone()
    fooled = torch.zeros(n, dtype=torch.bool, device=x.device)

    def loss_and_grad(points, idx):
        points = points.clone().requires_grad_(True)
        logits = model(points)
        values = criterion(logits, y[idx], target[idx])
        (grad,) = torch.autograd.grad(values.sum(), points)
        return values.detach(), grad.detach(), ~correct(logits.detach(), y[idx])

    idx = torch.arange(n, device=x.device)  # the samples still being attacked
    loss_now, grad, wrong = loss_and_grad(x_adv, idx)
    fooled[idx[wrong]] = True
    result[idx[wrong]] = x_adv[wrong]
    keep = ~wrong
    state = {"x_adv": x_adv, "x_best": x_adv.clone(), "grad": grad, "grad_best": grad.clone(),
             "loss_best": loss_now.clone(), "loss_best_last_check": loss_now.clone(),
             "reduced_last_check": torch.ones(n, device=x.device),
             "step": torch.full((n,), 2.0 * eps, device=x.device), "x_old": x_adv.clone()}
    history = torch.zeros(steps, n, device=x.device)  # the loss at every step, per sample
    state = {k: v[keep] for k, v in state.items()}
    history, idx = history[:, keep], idx[keep]
    k, size_decr, k_min = _checkpoint_lengths(steps)
    since_check = 0
    for i in range(steps):
        if len(idx) == 0:
            break
        x0 = x[idx]
        with torch.no_grad():
            step = state["step"].view(-1, *[1] * (x.dim() - 1))
            x_cur, x_old = state["x_adv"], state["x_old"]
            momentum = 0.75 if i > 0 else 1.0
            z = threat.project(x_cur + threat.ascent_step(state["grad"], step), x0)
            x_new = threat.project(x_cur + (z - x_cur) * momentum + (x_cur - x_old) * (1 - momentum), x0)
        state["x_old"] = x_cur
        state["x_adv"] = x_new
        loss_now, grad, wrong = loss_and_grad(x_new, idx)
        state["grad"] = grad
        history[i] = loss_now
        improved = loss_now > state["loss_best"]
        state["x_best"][improved] = x_new[improved]
        state["grad_best"][improved] = grad[improved]
        state["loss_best"] = torch.where(improved, loss_now, state["loss_best"])
        since_check += 1
        if since_check == k:
            # how often the loss rose over the last k steps; as in the reference code, the step before
            # the first one is row -1 of the (still zero) history
            before = torch.arange(i - k, i, device=history.device) % steps
            rises = (history[i - k + 1: i + 1] > history[before]).float().sum(0)
            oscillating = (rises <= k * rho).float()
            no_improvement = (1.0 - state["reduced_last_check"]) * (state["loss_best_last_check"] >= state["loss_best"]).float()
            halve = torch.max(oscillating, no_improvement)
            state["reduced_last_check"] = halve
            state["loss_best_last_check"] = state["loss_best"].clone()
            h = halve > 0
            state["step"] = torch.where(h, state["step"] / 2, state["step"])
            state["x_adv"][h] = state["x_best"][h]
            state["grad"][h] = state["grad_best"][h]
            k = max(k - size_decr, k_min)
            since_check = 0
        if wrong.any():  # fooled: keep this iterate, stop attacking the sample
            fooled[idx[wrong]] = True
            result[idx[wrong]] = x_new[wrong]
            keep = ~wrong
            state = {key: v[keep] for key, v in state.items()}
            history, idx = history[:, keep], idx[keep]
    if len(idx):
        result[idx] = state["x_best"]
    return result.detach(), fooled


def top_k_targets(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The class of the k-th largest logit per sample (k = 2: the runner-up), the targets APGD-T and
    FAB-T try in turn."""
    return logits.sort(dim=1)[1][:, -k]


def n_target_classes(requested: int, num_classes: int) -> int:
    """How many target classes a targeted attack can try: at most every wrong class."""
    return max(1, min(int(requested), num_classes - 1))
