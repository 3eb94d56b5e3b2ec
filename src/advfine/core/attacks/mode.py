"""How every attack holds the model it attacks: ``attack_mode``."""
from __future__ import annotations

from contextlib import contextmanager

from torch import nn


@contextmanager
def attack_mode(model: nn.Module):
    """Within: ``model`` in eval mode (BatchNorm statistics and dropout do not move) with every parameter
    frozen (``requires_grad`` False); afterwards each parameter's flag and the model's mode are restored,
    also on an exception. Attacks differentiate with respect to the input only: the parameters' gradient
    paths were wasted work, and a frozen weight lets a fake-quant layer reuse its quantized weight
    (``quantize.WeightFakeQuant``) instead of recomputing it at every attack step."""
    was_training = model.training
    frozen = [p for p in model.parameters() if p.requires_grad]
    try:
        model.eval()
        for p in frozen:
            p.requires_grad_(False)
        yield model
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
