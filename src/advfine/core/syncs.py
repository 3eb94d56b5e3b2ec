"""Counting a model's device syncs and ATen ops without a GPU.

On CUDA, anything that brings a tensor's value to the host waits for the device to finish its queue (a
sync): ``.item()``, ``int(t)``, ``bool(t)``, ``float(t)`` (all ``aten._local_scalar_dense``), ops whose
output shape depends on the values (``nonzero``, ``masked_select``, ``unique``, indexing with a boolean
mask), ops that return a Python value (``equal``, ``allclose``) and ops that check their arguments' values
on the host. ``SyncCounter`` is a TorchDispatchMode that sees every ATen op a CPU run dispatches and
counts those: the same Python code takes the same ops on either device, so a count on the CPU is the
count on CUDA, for the code path a CUDA tensor takes (``quantize.emulate_cuda_path`` runs the fake
quantizers' CUDA path on the CPU). The mode sees the ops Python calls, not the ones an op calls inside
its C++ implementation: those that read values on the host there are listed (``_INTERNAL_READS``, from
torch's source). On a GPU, ``torch.cuda.set_sync_debug_mode("warn")`` counts the real ones
(``benchmarks/sync_count.py`` does both).
"""
from __future__ import annotations

import warnings
from collections import Counter
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# One host read each: the value itself, a shape from the values, or a Python result.
_SYNC_OPS = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten.equal, aten.allclose,
             aten.unique_consecutive, aten.unique_dim, aten._unique, aten._unique2, aten.bincount}


def _per_channel_zero_point_check(args, kwargs) -> int:
    # aten/src/ATen/native/quantized/FakeQuantPerChannelAffine.cpp: an integer zero point's range is
    # checked with at::aminmax and two .item() calls; a floating one is not checked
    zero_point = args[2] if len(args) > 2 else kwargs["zero_point"]
    return 0 if zero_point.is_floating_point() else 2


def _boolean_index(args, kwargs) -> int:
    # indexing with a boolean mask turns it into indices with nonzero inside the op
    indices = args[1] if len(args) > 1 else kwargs["indices"]
    return int(any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices))


_INTERNAL_READS = {aten.fake_quantize_per_channel_affine_cachemask.default: _per_channel_zero_point_check,
                   aten.index.Tensor: _boolean_index, aten.index_put.default: _boolean_index,
                   aten.index_put_.default: _boolean_index, aten._index_put_impl_.default: _boolean_index}


def host_reads(func, args, kwargs) -> int:
    """How many times the ATen op ``func`` called with these arguments reads tensor values on the host
    (device syncs on CUDA)."""
    if func.overloadpacket in _SYNC_OPS:
        return 1
    check = _INTERNAL_READS.get(func)
    return check(args, kwargs) if check else 0


class SyncCounter(TorchDispatchMode):
    """Counts ATen ops and host reads (``host_reads``) of what runs within it: ``ops``, ``syncs``, and
    ``sync_ops`` (op name: count). ``watch`` attributes them also to chosen modules' forwards
    (``watched_ops``, ``watched_syncs``)."""

    def __init__(self):
        super().__init__()
        self.ops = self.syncs = self.watched_ops = self.watched_syncs = 0
        self.sync_ops: Counter = Counter()
        self._inside = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        reads = host_reads(func, args, kwargs)
        self.ops += 1
        self.syncs += reads
        if reads:
            self.sync_ops[str(func.overloadpacket)] += reads
        if self._inside:
            self.watched_ops += 1
            self.watched_syncs += reads
        return func(*args, **kwargs)

    @contextmanager
    def watch(self, modules):
        """Within: ops run inside the forward of any of ``modules`` also count as watched."""

        def enter(module, args):
            self._inside += 1

        def leave(module, args, output):
            self._inside -= 1

        handles = [h for m in modules for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self._inside = 0


def count(fn, watched: list[nn.Module] = ()) -> SyncCounter:
    """Run ``fn()`` under a SyncCounter watching ``watched``; returns the counter."""
    counter = SyncCounter()
    with counter, counter.watch(watched):
        fn()
    return counter


def cuda_syncs(fn, device: torch.device | None = None) -> int:
    """The device syncs CUDA itself reports while ``fn()`` runs (``torch.cuda.set_sync_debug_mode("warn")``)."""
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)
