"""The real integer model a user deploys: int8 weights, uint8 activations, integer kernels
(torch.ao.quantization FX graph mode, CPU only).

It is ``convert_fx`` of the fake-quant INT8 model (``quantize.quantize_ptq``/``prepare_qat`` at 8 bits):
the same graph (BatchNorm folded, ReLU fused), the same scales and zero points, so the model whose
robustness we measure and the model whose latency we measure are one network (agreement >= 99 % of
test predictions, checked by the tests and shown in the compute table). A plain float model is
first fake-quantized with PTQ on the given calibration batches. torch marks FX quantization
deprecated in favour of torchao's pt2e flow; torchao is not a dependency here, and torch 2.14 ships FX.

Engine: oneDNN, the fastest of torch's engines on the 2-core AVX2 AMD EPYC this was built on
(benchmarks/compressed_speed.py measures oneDNN, x86 and qnnpack side by side). Without VNNI an
int8 multiply-add takes two multiply instructions (vpmaddubsw + vpmaddwd), which caps what int8
convolutions gain over fp32 on such a CPU, and saturates 8-bit activations: hence 7-bit activation
steps (``quantize.py``).
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from torch.ao.quantization.quantize_fx import convert_fx

from advfine.core.quantize import is_quantized, quant_info, quantize_ptq

PREFERRED_BACKENDS = ("onednn", "x86", "fbgemm", "qnnpack")  # fastest first (measured here); builds differ


def quantized_backend() -> str:
    supported = torch.backends.quantized.supported_engines
    return next(b for b in PREFERRED_BACKENDS if b in supported)


def export_int8(model: nn.Module, calibration_batches: list[torch.Tensor] | None = None,
                backend: str | None = None) -> nn.Module:
    """The integer model of ``model`` on the CPU: of a fake-quant INT8 model directly (its own scales),
    of a plain float model after PTQ INT8 on ``calibration_batches`` (inputs in [0, 1]). ``model`` is not
    changed. Sets ``torch.backends.quantized.engine`` (oneDNN where the build has it): the packed
    weights are that engine's, and a copy (deepcopy, unpickling) repacks them for the engine set then."""
    backend = backend or quantized_backend()  # another engine only to compare them (benchmarks)
    if backend not in torch.backends.quantized.supported_engines:
        raise ValueError(f"quantized engine {backend!r} is not in this torch build: "
                         f"{torch.backends.quantized.supported_engines}")
    if is_quantized(model):
        info = quant_info(model)
        if info is None or info["bits"] != 8:
            raise ValueError("export_int8 needs an INT8 fake-quant model (quantize_ptq/prepare_qat with bits=8) "
                             "or a plain float model with calibration batches")
        fake = copy.deepcopy(model)
    else:
        if not calibration_batches:
            raise ValueError("export_int8 of a float model needs at least one calibration batch")
        fake = quantize_ptq(model, 8, calibration_batches)
    torch.backends.quantized.engine = backend
    fake = fake.cpu().eval().to(memory_format=torch.contiguous_format)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the FX deprecation and oneDNN-without-VNNI notices
        return convert_fx(fake).eval()
