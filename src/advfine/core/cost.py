"""What a model costs: parameters, multiply-accumulates, bytes of weights, the compute a training run
spent, and measured inference latency (of the model and, for PTQ INT8 nodes, of a real integer model
exported from it)."""
from __future__ import annotations

import io
import logging
import math
import time

import torch
from torch import nn

from advfine.core.binary import BinaryLayer, binary_layers
from advfine.core.evaluate import predict
from advfine.core.objectives import TradesObjective
from advfine.core.runtime import place_model

log = logging.getLogger("advfine")

def model_cost(model: nn.Module, input_shape: tuple) -> dict:
    """Parameters and multiply-accumulates of one input, counted with forward hooks on Conv2d/Linear
    (they also see fake-quant and binary layers, subclasses of both). ``input_shape`` is one input's shape (C, H, W); a leading batch dimension is allowed."""
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
    parameters and are not counted. INT1 models keep their first and last layers in float (binary.py):
    only their binary layers' weights take 1 bit."""
    if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or bits < 1):
        raise ValueError(f"bits must be a positive int or None, got {bits!r}")
    total = 0
    binary_model = bool(binary_layers(model))
    for name, param in model.named_parameters():
        layer_name, _, leaf = name.rpartition(".")
        layer = model.get_submodule(layer_name)
        is_weight = leaf == "weight" and isinstance(layer, BinaryLayer if binary_model else (nn.Conv2d, nn.Linear))
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


def step_passes(attack_steps: int, trades: bool = False) -> int:
    """Forward-pass equivalents one training example costs in one step: training costs about 3 (forward,
    backward to activations and to weights), each attack step about 2 (forward, backward to the input
    only). TRADES adds a clean forward pass before its attack and trains on the clean and the perturbed
    batch together: 1 + 2 x steps + 2 x 3."""
    return (7 if trades else 3) + 2 * attack_steps


def training_macs(history: list[dict], n_examples: int, forward_macs: int, attack=None,
                  calibration_images: int = 0) -> int:
    """Multiply-accumulates a training run spent, estimated from its epochs (``step_passes`` per example;
    an epoch with eps > 0 runs ``attack``'s steps, a clean epoch of the eps warm-up none), plus one
    forward pass for each of ``calibration_images`` (QAT's observers, calibrated before training)."""
    total = calibration_images * forward_macs
    for epoch in history:
        adversarial = attack is not None and epoch["eps"] > 0
        passes = step_passes(attack.steps, isinstance(attack, TradesObjective)) if adversarial else 3
        total += n_examples * passes * forward_macs
    return int(total)


def _latency_batch(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``batch_size`` test images (repeated when the test set is smaller)."""
    repeats = -(-batch_size // len(x))
    return torch.cat([x] * repeats)[:batch_size]


def _serialized_bytes(model: nn.Module) -> int:
    """Bytes of the model's state_dict as torch.save writes it (int8 weights are stored as int8)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def inference_costs(model: nn.Module, float_twin: nn.Module | None, test_x: torch.Tensor, test_y: torch.Tensor,
                    settings: dict, threads: int, int8_model: nn.Module | None = None) -> dict:
    """Measured inference cost on the CPU (whatever device evaluated the model): the median latency of
    ``settings['latency_repeats']`` passes of a batch of ``settings['latency_batch_size']`` test images.
    With ``int8_model`` (PTQ INT8 nodes: the real integer model exported from ``float_twin``), the same
    for it, with its clean accuracy and its agreement with ``model``. A fake-quant model (``float_twin``
    given) runs at fp32 speed plus the rounding: quantization only pays as integers. ``settings`` is
    the config's ``evaluate`` section."""
    batch_size, repeats = settings["latency_batch_size"], settings["latency_repeats"]
    result = {"latency_ms": None, "latency_batch": batch_size, "latency_threads": threads, "int8": None}
    if repeats == 0:
        return result
    cpu = torch.device("cpu")
    example = _latency_batch(test_x, batch_size)
    if float_twin is None:  # float models run channels-last in this pipeline (runtime.place_model)
        place_model(model, cpu)
        example = example.contiguous(memory_format=torch.channels_last)
    result["latency_ms"] = 1000 * measure_latency(model, example, repeats=repeats, warmup=1)
    if int8_model is not None:
        int8_pred = predict(int8_model, test_x, settings["batch_size"], cpu)
        fake_pred = predict(model, test_x, settings["batch_size"], cpu)
        result["int8"] = {
            "clean_acc": (int8_pred == test_y).float().mean().item(),
            "fake_quant_clean_acc": (fake_pred == test_y).float().mean().item(),
            "agreement": (int8_pred == fake_pred).float().mean().item(),
            "latency_ms": 1000 * measure_latency(int8_model, _latency_batch(test_x, batch_size),
                                                 repeats=repeats, warmup=1),
            "model_bytes": _serialized_bytes(int8_model),
        }
        log.info("real INT8 model: %s", result["int8"])
    log.info("inference latency, batch %d, %d thread(s): %.1f ms", batch_size, threads, result["latency_ms"])
    return result
