"""A real integer model from a float one: int8 weights, uint8 activations, integer kernels
(torch.ao.quantization FX graph mode, x86 backend, CPU only).

NNI's PTQ models are fake-quant: fp32 weights and activations rounded to the grid, as slow as fp32
(slower: the rounding costs extra). To measure what INT8 really buys, the same float weights are
exported through torch.ao, calibrated on the same batches, with conv+ReLU fused. Its observers pick
their own ranges (histogram for activations, per-channel min/max for weights), so its scales differ
slightly from NNI's; the tests bound the accuracy difference. torch marks FX quantization deprecated
in favour of torchao's pt2e flow; torchao is not a dependency here, and torch 2.14 still ships FX.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

BACKEND = "x86"


def export_int8(float_model: nn.Module, calibration_batches: list[torch.Tensor]) -> nn.Module:
    """An int8 copy of ``float_model`` (a plain model: no NNI wrappers) on the CPU, calibrated on
    ``calibration_batches`` (inputs in [0, 1]); ``float_model`` is not changed."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if not calibration_batches:
        raise ValueError("export_int8 needs at least one calibration batch")
    if any("_nni_wrapper" in name for name, _ in float_model.named_modules()):
        raise ValueError("export_int8 needs a plain float model; rebuild it from float_state_dict first")
    torch.backends.quantized.engine = BACKEND
    model = copy.deepcopy(float_model).cpu().eval()
    model = model.to(memory_format=torch.contiguous_format)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the FX deprecation notice, once per call
        prepared = prepare_fx(model, get_default_qconfig_mapping(BACKEND), (calibration_batches[0][:1].cpu(),))
        with torch.no_grad():
            for batch in calibration_batches:
                prepared(batch.cpu())
        return convert_fx(prepared).eval()
