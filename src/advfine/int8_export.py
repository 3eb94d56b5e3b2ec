"""A real integer model from a float one: int8 weights, uint8 activations, integer kernels
(torch.ao.quantization FX graph mode, oneDNN backend, CPU only).

NNI's PTQ models are fake-quant: fp32 weights and activations rounded to the grid, as slow as fp32
(slower: the rounding costs extra). To measure what INT8 really buys, the same float weights are
exported through torch.ao, calibrated on the same batches, with conv+ReLU fused. Its observers pick
their own ranges (histogram for activations, per-channel min/max for weights), so its scales differ
slightly from NNI's; the tests bound the accuracy difference. torch marks FX quantization deprecated
in favour of torchao's pt2e flow; torchao is not a dependency here, and torch 2.14 still ships FX.

Engine: oneDNN, the fastest of torch's engines on the 2-core AVX2 AMD EPYC this was built on
(benchmarks/compressed_speed.py measures oneDNN, x86 and qnnpack side by side). Without VNNI an
int8 multiply-add takes two multiply instructions (vpmaddubsw + vpmaddwd), which caps what int8
convolutions gain over fp32 on such a CPU. (Folding the normalization into the first conv and a
channels-last flatten were tried and gained little; they were left out.)
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from torch.ao.quantization import QConfig, get_default_qconfig_mapping
from torch.ao.quantization.observer import HistogramObserver, default_per_channel_weight_observer
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

PREFERRED_BACKENDS = ("onednn", "x86", "fbgemm", "qnnpack")  # fastest first (measured here); builds differ


def quantized_backend() -> str:
    supported = torch.backends.quantized.supported_engines
    return next(b for b in PREFERRED_BACKENDS if b in supported)


# Activations on 7 bits: without VNNI (this AMD EPYC) vpmaddubsw adds two uint8 x int8 products into a
# saturating int16, which 2 x 255 x 127 overflows and 2 x 127 x 128 does not.
REDUCE_RANGE = True


def export_int8(float_model: nn.Module, calibration_batches: list[torch.Tensor],
                backend: str | None = None) -> nn.Module:
    """An int8 copy of ``float_model`` (a plain model: no NNI wrappers) on the CPU, calibrated on
    ``calibration_batches`` (inputs in [0, 1]); ``float_model`` is not changed.

    Sets ``torch.backends.quantized.engine`` (oneDNN where the build has it): the model's packed weights are oneDNN's, and
    a copy (deepcopy, unpickling) repacks them for whatever engine is set then."""
    if not calibration_batches:
        raise ValueError("export_int8 needs at least one calibration batch")
    if any("_nni_wrapper" in name for name, _ in float_model.named_modules()):
        raise ValueError("export_int8 needs a plain float model; rebuild it from float_state_dict first")
    backend = backend or quantized_backend()  # another engine only to compare them (benchmarks)
    if backend not in torch.backends.quantized.supported_engines:
        raise ValueError(f"quantized engine {backend!r} is not in this torch build: "
                         f"{torch.backends.quantized.supported_engines}")
    torch.backends.quantized.engine = backend
    model = copy.deepcopy(float_model).cpu().eval().to(memory_format=torch.contiguous_format)
    qconfig = QConfig(activation=HistogramObserver.with_args(reduce_range=REDUCE_RANGE),
                      weight=default_per_channel_weight_observer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the FX deprecation and oneDNN-without-VNNI notices
        qconfig_mapping = get_default_qconfig_mapping(backend).set_global(qconfig)
        prepared = prepare_fx(model, qconfig_mapping, (calibration_batches[0][:1].cpu(),))
        with torch.no_grad():
            for batch in calibration_batches:
                prepared(batch.cpu())
        return convert_fx(prepared).eval()
