"""FAB-T (Croce & Hein 2020, "Minimally distorted adversarial examples with a fast adaptive boundary
attack"), L-infinity or L2, targeted at the top wrong classes, as AutoAttack runs it.

FAB is not re-implemented here: torchattacks 3.5.1 has it (its ``FAB`` follows the reference code),
and we drive it at AutoAttack's settings, which are not torchattacks' defaults (AutoAttack: 100 steps,
9 target classes; torchattacks: 10 steps, every wrong class). torchattacks is imported only when a
suite asks for FAB-T (it is slow to import).
FAB returns minimum-norm points; only those within eps and [0, 1] that fool the model count
(checked by the caller, ``evaluate.run_suite``, for every attack).
"""
from __future__ import annotations

import torch
from torch import nn

from advfine.core.attacks.mode import attack_mode
from advfine.core.attacks.threat import ThreatModel


def fab_t(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, steps: int, target_classes: int,
          num_classes: int, seed: int, restarts: int = 1) -> torch.Tensor:
    """FAB-T's adversarial points for ``x`` (the clean point where it found none) in ``threat``'s norm and
    radius (torchattacks keeps them in [0, 1] whether or not the threat model does)."""
    # deferred: torchattacks is slow to import and only FAB-T and Square-L2 need it
    import torchattacks

    attack = torchattacks.FAB(model, norm={"linf": "Linf", "l2": "L2"}[threat.norm], eps=threat.eps, steps=steps,
                              n_restarts=restarts, multi_targeted=True, n_classes=num_classes, seed=seed)
    attack.n_target_classes = target_classes  # torchattacks tries every wrong class; AutoAttack the top 9
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), attack_mode(model):  # FAB reseeds torch's global generator
        return attack(x, y).detach()
