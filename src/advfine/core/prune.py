"""L1-norm structured filter pruning with NNI 3.0 (Li et al. 2017): filters ranked by L1 norm, then
physically removed by NNI's ModelSpeedup, which also shrinks what depends on them (BatchNorm, the
next layer's input channels, residual groups). NNI is the better tool here (dependency groups and
speed-up); quantization does not use it (quantize.py)."""
from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from advfine.core.models import arch_of, build_model
from advfine.core.quantize import is_quantized

# ModelSpeedup logs every replaced module at INFO: it gets a logger of its own that passes warnings only.
_SPEEDUP_LOGGER = logging.getLogger(__name__ + ".speedup")
_SPEEDUP_LOGGER.setLevel(logging.WARNING)


def prune_filters_l1(model: nn.Module, arch: dict, sparsity: float,
                     example_input: torch.Tensor) -> tuple[nn.Module, dict]:
    """Remove the fraction ``sparsity`` of filters with the smallest L1 norm from every Conv2d (NNI prunes
    ``int(out_channels * sparsity)`` filters per layer) and physically shrink the model (BatchNorm layers
    lose the channels of their conv). Convs whose outputs are added together (ResNet residuals) form one
    dependency group that loses the same filters, ranked by their mean L1 norm. The input model is left
    untouched; returns a fresh ``build_model(new_arch)`` in eval mode and ``new_arch``."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparsity must be a number with 0 < sparsity < 1, got {sparsity!r}")
    if is_quantized(model):
        raise ValueError("prune_filters_l1 needs a plain float model, got one already quantized")
    # Only pruning needs NNI, and stage compress imports this module for PTQ too: a machine without NNI
    # can still quantize (benchmarks/gpu_check.py).
    # deferred: see above
    from nni.compression.pruning import L1NormPruner
    from nni.compression.speedup import ModelSpeedup
    from nni.compression.speedup.error_code import EmptyLayerError
    from nni.compression.utils import auto_set_denpendency_group_ids  # (sic); deferred: see above

    work = copy.deepcopy(model).eval()
    device = next(work.parameters()).device
    example_input = example_input.detach().to(device)
    config = [{"op_types": ["Conv2d"], "sparse_ratio": float(sparsity)}]
    # Without groups, each residual conv gets its own mask and ModelSpeedup keeps the union of the masks
    # of added channels, so a ResNet stays far wider than asked (FACTS.md). NNI finds the groups by tracing;
    # for a plain chain like CNN8 every conv is its own group and the masks are the same as without.
    config = auto_set_denpendency_group_ids(work, config, example_input)
    pruner = L1NormPruner(work, config)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    # ModelSpeedup's default tracer (NNI's concrete_trace) fails on torch >= 2.3 (microsoft/nni#5768). Its
    # documented graph_module argument takes torch.fx's own trace instead, which our models (no data-dependent
    # control flow) allow. Chosen over a filter-removal step of our own: no per-architecture code, and NNI
    # still shrinks every dependent layer; tests/test_prune.py pins the filters it removes.
    try:
        ModelSpeedup(work, example_input, masks, graph_module=torch.fx.symbolic_trace(work),
                     logger=_SPEEDUP_LOGGER).speedup_model()
    except EmptyLayerError as error:
        # ModelSpeedup also drops channels whose output is constant, e.g. those of all-zero filters.
        raise ValueError(f"pruning at sparsity {sparsity} would leave a layer with no channels: all filters "
                         "that L1 ranking keeps in some layer give a constant output (a dead layer, e.g. all-zero "
                         "weights); such a model cannot be pruned") from error
    new_arch = arch_of(work, arch)
    pruned = build_model(new_arch).to(device)
    pruned.load_state_dict(work.state_dict())
    return pruned.eval(), new_arch
