"""The decision rule: a model classifies a sample correctly only when the true class's logit is strictly
larger than every other; a tie counts as an error. Every accuracy (clean, robust, training, the deployed
INT8 model's) and every attack's success test uses it.

Why not argmax: it breaks a tie towards the lower class index, which favours some classes for no reason,
and quantized models tie often (INT4 fake-quant logits take a few distinct values, so the true class and
another can share the top value exactly). The strict rule is the conservative one: a point where the model
cannot tell the true class from another is not a point it gets right."""
from __future__ import annotations

import torch


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{i != y} z_i per sample: positive exactly when the sample is classified correctly."""
    u = torch.arange(len(y), device=logits.device)
    true = logits[u, y]
    other = logits.clone()
    other[u, y] = -float("inf")
    return true - other.amax(1)


def correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per sample: is the true class's logit strictly the largest? (NaN logits: never.)"""
    return margin(logits, y) > 0
