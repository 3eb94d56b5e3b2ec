"""What a model costs: parameters, multiply-accumulates, bytes of weights. No NNI import here, so
evaluating a plain model does not pay for it."""
from __future__ import annotations

import math
import time

import torch
from torch import nn

NNI_WRAPPER = "_nni_wrapper"  # the child module NNI's quantizer puts on each wrapped layer


def model_cost(model: nn.Module, input_shape: tuple) -> dict:
    """Parameters and multiply-accumulates of one input, counted with forward hooks on Conv2d/Linear
    (NNI's ``count_flops_params`` fails on NNI-quantized models: it looks for pruning masks in every
    wrapper). ``input_shape`` is one input's shape (C, H, W); a leading batch dimension is allowed."""
    shape = tuple(input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    macs = 0

    def count(module, inputs, output):
        nonlocal macs
        per_sample = output[0].numel()  # output elements of one sample
        if isinstance(module, nn.Conv2d):
            k_h, k_w = module.kernel_size
            macs += per_sample * (module.in_channels // module.groups) * k_h * k_w
        else:
            macs += per_sample * module.in_features

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    training = model.training
    param = next(model.parameters())
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(shape, dtype=param.dtype, device=param.device))
    finally:
        for h in handles:
            h.remove()
        model.train(training)
    return {"params": sum(p.numel() for p in model.parameters()), "macs": int(macs)}


def weight_storage_bytes(model: nn.Module, bits: int | None) -> int:
    """Bytes to store the parameters: Conv2d/Linear weights at ``bits``, everything else (biases ...) at
    32 bits; ``bits=None`` means fp32 throughout. Each tensor is packed to whole bytes; the few
    quantization scales/zero points are not counted. Buffers (e.g. normalization constants) are not
    parameters and are not counted."""
    if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or bits < 1):
        raise ValueError(f"bits must be a positive int or None, got {bits!r}")
    total = 0
    for name, param in model.named_parameters():
        name = name.replace(f"{NNI_WRAPPER}.", "")  # quantized model: count its float weight once
        layer_name, _, leaf = name.rpartition(".")
        layer = model.get_submodule(layer_name)
        is_weight = leaf == "weight" and isinstance(layer, (nn.Conv2d, nn.Linear))
        width = bits if (is_weight and bits is not None) else 32
        total += math.ceil(param.numel() * width / 8)
    return total


def measure_latency(model: nn.Module, example: torch.Tensor, repeats: int = 10, warmup: int = 2) -> float:
    """Median seconds of one forward pass of ``example`` (CPU, no gradients)."""
    model.eval()
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            start = time.perf_counter()
            model(example)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]
