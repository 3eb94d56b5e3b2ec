"""Square attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box adversarial
attack via random search"), L-infinity: a random search that never looks at a gradient. It starts from
vertical stripes of +-eps and proposes, query after query, a square window of fresh +-eps values
(one sign per channel), kept when the margin z_y - max_{i != y} z_i falls; the window shrinks on the
reference schedule. Because it needs only the model's outputs, it breaks models whose gradients are
masked (rounding without a useful gradient, quantized inputs) that gradient attacks cannot.

Written here after the authors' reference code (auto-attack, ``square.py``): the official package is
not on PyPI. As there, one window position and one set of signs serve the whole batch at each query,
and a sample stops being queried once it is misclassified.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from advfine.core.attacks.mode import attack_mode
from advfine.core.attacks.threat import ThreatModel
from advfine.core.decision import margin

P_INIT = 0.8  # the fraction of the image the first windows cover (the reference's p_init for L-inf)
# (query index out of 10,000, divisor of p_init from there on): the reference's schedule
_SCHEDULE = ((8000, 512), (6000, 256), (4000, 128), (2000, 64), (1000, 32), (500, 16), (200, 8), (50, 4), (10, 2))


def window_fraction(query: int, n_queries: int, p_init: float = P_INIT) -> float:
    """p of the reference schedule at ``query`` of ``n_queries`` (rescaled to 10,000 queries)."""
    it = int(query / n_queries * 10000)
    for start, divisor in _SCHEDULE:
        if it > start:
            return p_init / divisor
    return p_init


@torch.no_grad()
def square_linf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, n_queries: int,
                p_init: float = P_INIT, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(x_adv, fooled)``: the best point found per sample (in ``threat``, an L-inf threat model) and
    whether it is misclassified. ``n_queries`` counts the initial stripes as the first query."""
    if threat.norm != "linf":
        raise ValueError(f"square_linf attacks in an L-inf threat model, got norm {threat.norm!r}")
    with attack_mode(model):
        return _square(model, x.detach(), y, threat, n_queries, p_init, generator)


def _signs(shape, generator, device, dtype) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator, device=device).to(dtype) * 2 - 1


def _square(model, x, y, threat, n_queries, p_init, generator):
    n, c, h, w = x.shape
    eps = threat.eps
    x_best = threat.project(x + eps * _signs((n, c, 1, w), generator, x.device, x.dtype), x)
    margin_min = margin(model(x_best), y)
    for query in range(1, n_queries):
        todo = (margin_min > 0).nonzero().flatten()
        if len(todo) == 0:
            break
        x_cur, x_best_cur = x[todo], x_best[todo]
        side = max(int(round(math.sqrt(window_fraction(query, n_queries, p_init) * h * w))), 1)
        side = min(side, h, w)
        top = int(torch.randint(0, h - side + 1, (1,), generator=generator, device=x.device))
        left = int(torch.randint(0, w - side + 1, (1,), generator=generator, device=x.device))
        delta = torch.zeros((c, h, w), device=x.device, dtype=x.dtype)
        delta[:, top:top + side, left:left + side] = 2.0 * eps * _signs((c, 1, 1), generator, x.device, x.dtype)
        x_new = threat.project(x_best_cur + delta, x_cur)
        new_margin = margin(model(x_new), y[todo])
        better = new_margin < margin_min[todo]
        margin_min[todo] = torch.where(better, new_margin, margin_min[todo])
        x_best[todo[better]] = x_new[better]
    return x_best, margin_min <= 0


class Float32Logits(nn.Module):
    """``model`` with its logits cast to float32: under bf16 autocast they are bf16, and torchattacks'
    Square writes them into float32 tensors by index, which torch refuses for mixed dtypes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).float()


def square_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, n_queries: int,
              p_init: float = P_INIT, seed: int = 0) -> torch.Tensor:
    """The Square attack in an L2 threat model: torchattacks 3.5.1's port of the reference code (its L2 branch,
    with the reference's centred windows), driven at our settings; the L2 proposal distribution is intricate
    and torchattacks carries it faithfully, so it is not rewritten here. torchattacks keeps images in [0, 1]
    whether or not the threat model does. Returns the points it found (the caller checks the threat model
    and the prediction)."""
    if threat.norm != "l2":
        raise ValueError(f"square_l2 attacks in an L2 threat model, got norm {threat.norm!r}")
    import torchattacks  # deferred: slow to import, and only Square-L2 and FAB-T need it

    attack = torchattacks.Square(Float32Logits(model), norm="L2", eps=threat.eps, n_queries=n_queries, n_restarts=1, p_init=p_init,
                                 loss="margin", resc_schedule=True, seed=seed)
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), attack_mode(model):  # torchattacks reseeds torch's global generator
        return attack(x, y).detach()
