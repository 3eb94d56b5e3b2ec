"""A tensor computed from a weight (its fake-quantized or binary form), kept while the weight is unchanged
and takes no gradient, so that eval forwards and attack steps compute it once instead of at every forward."""
from __future__ import annotations

import weakref
from typing import Callable

import torch


class KeptFromWeight:
    """``get(w, compute)`` returns ``compute(w)``, computed again only when needed: the kept result is
    reused while ``w`` is the same tensor, unchanged (its version counter, storage, device, dtype and
    shape: an optimizer step, ``load_state_dict`` and ``.to()`` all change one) and no gradient flows to
    it. A forward that differentiates with respect to ``w`` (training) always computes anew and drops
    the kept tensor: one tensor in several autograd graphs would break their backward. Copies (deepcopy,
    pickle) start empty, so nothing kept is ever saved; ``reuses`` counts the forwards served (from 0 in a
    copy)."""

    def __init__(self):
        self._entry: tuple | None = None  # (weakref to w, w's key, the result)
        self.reuses = 0

    def __getstate__(self):
        return {"_entry": None, "reuses": 0}

    def get(self, w: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if torch.is_grad_enabled() and w.requires_grad:
            self._entry = None
            return compute(w)
        key = (w._version, w.data_ptr(), w.device, w.dtype, w.shape)
        if self._entry is not None and self._entry[0]() is w and self._entry[1] == key:
            self.reuses += 1
            return self._entry[2]
        result = compute(w)
        # an inference tensor cannot be saved by a later forward that records a graph for its input
        self._entry = None if torch.is_inference_mode_enabled() else (weakref.ref(w), key, result)
        return result
