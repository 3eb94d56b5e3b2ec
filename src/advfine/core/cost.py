"""What a model costs: parameters, multiply-accumulates, bytes of weights and of memory, the compute a
training run spent, and measured inference latency (the deployment stage times every model of a run
interleaved with the others: ``time_interleaved``, ``latency_stats``)."""
from __future__ import annotations

import io
import math
import time

import torch
from torch import nn

from advfine.core.binary import BinaryLayer, binary_layers
from advfine.core.objectives import TradesObjective

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


def latency_batch(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``batch_size`` test images (repeated when the test set is smaller)."""
    repeats = -(-batch_size // len(x))
    return torch.cat([x] * repeats)[:batch_size]


def serialized_bytes(model: nn.Module) -> int:
    """Bytes of the model's state_dict as torch.save writes it (int8 weights are stored as int8)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def memory_bytes(model: nn.Module) -> int:
    """Bytes of the tensors the model holds: parameters and buffers of a float or fake-quant model; for a
    real integer model its packed weights (int8, read back through its state_dict) and their scales."""
    def size(value) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, (tuple, list)):
            return sum(size(v) for v in value)
        return 0

    return sum(size(value) for value in model.state_dict().values())


def time_interleaved(models: dict[str, tuple[nn.Module, torch.Tensor]], rounds: int, warmup: int) -> dict[str, list]:
    """Seconds of each timed forward pass of ``models`` (name -> (model, its input)), in ``rounds`` rounds
    that each time every model once: a drift of the machine's speed (another process, the clock) lands on
    every model alike instead of on the ones timed during it. Each round starts one model further down the
    list. Right before each timed pass the model makes ``warmup`` untimed passes, so the timed one finds
    its own weights, activations and allocator state, not those of the model before it (measured on the
    tiny workflow's 25 nodes, 10 rounds: a node's fake-quant fine-tuning variants 13.5 % apart without
    it, 1.0 % with one)."""
    names = list(models)
    times: dict[str, list] = {name: [] for name in names}
    with torch.no_grad():
        for name in names:
            models[name][0].eval()
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                model, example = models[name]
                for _ in range(warmup):
                    model(example)
                start = time.perf_counter()
                model(example)
                times[name].append(time.perf_counter() - start)
    return times


def latency_stats(seconds: list[float], batch_size: int) -> dict:
    """Median, quartiles and range (ms per batch) of one model's timed passes, and its throughput at the
    median (images per second)."""
    ms = sorted(1000.0 * s for s in seconds)
    if not ms:
        raise ValueError("latency_stats needs at least one timed pass")

    def quantile(q: float) -> float:  # linear interpolation between order statistics (numpy's default)
        pos = q * (len(ms) - 1)
        low = math.floor(pos)
        high = min(low + 1, len(ms) - 1)
        return ms[low] + (ms[high] - ms[low]) * (pos - low)

    median = quantile(0.5)
    return {"latency_ms": median, "latency_q1_ms": quantile(0.25), "latency_q3_ms": quantile(0.75),
            "latency_iqr_ms": quantile(0.75) - quantile(0.25), "latency_min_ms": ms[0], "latency_max_ms": ms[-1],
            "throughput_ips": 1000.0 * batch_size / median if median > 0 else None, "repeats": len(ms)}
