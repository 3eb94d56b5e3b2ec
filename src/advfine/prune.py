"""L1-norm structured filter pruning with NNI 3.0 (Li et al. 2017): filters ranked by L1 norm, then
physically removed by NNI's ModelSpeedup, which also shrinks what depends on them (BatchNorm, the
next layer's input channels, residual groups). NNI is the better tool here (dependency groups and
speed-up); quantization does not use it (quantize.py)."""
from __future__ import annotations

import copy
import logging

import torch
from nni.compression.pruning import L1NormPruner
from nni.compression.speedup import ModelSpeedup
from nni.compression.utils import auto_set_denpendency_group_ids  # (sic)
from torch import nn

from .models import arch_of, build_model
from .nni_compat import apply_nni_torch_fixes
from .quantize import is_quantized


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
    apply_nni_torch_fixes()
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
    nni_logger = logging.getLogger("nni")
    level = nni_logger.level
    nni_logger.setLevel(logging.WARNING)  # ModelSpeedup logs every replaced module at INFO
    try:
        ModelSpeedup(work, example_input, masks, logger=nni_logger).speedup_model()
    finally:
        nni_logger.setLevel(level)
    new_arch = arch_of(work, arch)
    pruned = build_model(new_arch).to(device)
    pruned.load_state_dict(work.state_dict())
    return pruned.eval(), new_arch
