"""Where and how computations run: device choice, numeric precision, backend flags, host-to-device
copies, threads, seeds."""
from __future__ import annotations

import contextlib
import os
import random
import resource
import sys
from pathlib import Path

import numpy as np
import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; an explicit name is checked to exist here (every job
    checks when it starts; advfine.pipeline.config.check_device before jobs run on this machine)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device: {name!r} was asked for but CUDA is not available; use device: auto or cpu")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise RuntimeError(f"device: {name!r} was asked for but {count} CUDA device(s) are visible here (cuda:0 to "
                           f"cuda:{count - 1}" + (f", CUDA_VISIBLE_DEVICES={visible}" if visible is not None else "")
                           + "); use device: auto, cuda, or cuda:N with N below that count")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("device: 'mps' was asked for but MPS is not available; use device: auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A generator on ``device`` (random starts of attacks draw noise there)."""
    return torch.Generator(device=device).manual_seed(seed)


def set_threads(threads: int) -> None:
    """One job = ``threads`` cores (Snakemake's ``threads``); torch would otherwise use them all."""
    torch.set_num_threads(max(1, int(threads)))


def place_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move a model to ``device`` in channels-last layout: its convolutions run 15-20 % faster on
    this CPU (measured, CNN8 PGD training step) and it is the layout GPUs prefer too."""
    return model.to(device=device, memory_format=torch.channels_last)


# fp32: the paper's setting, computed in full float32 on every device (TF32 off: see set_tf32).
# tf32: fp32 tensors, but a GPU's matrix products and convolutions round their inputs to TF32 (10-bit
# mantissa) on Ampere and newer tensor cores; the same as fp32 on a CPU.
# bf16: mixed precision through autocast (the CPU's AVX-512 bf16 units, a GPU's tensor cores);
# parameters, optimizer state and the attack's perturbation stay fp32.
PRECISIONS = ("fp32", "tf32", "bf16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"config key precision: must be one of {PRECISIONS}, got {precision!r}")
    return precision


def autocast(device: torch.device, precision: str):
    """The context forward passes run in: nothing for fp32 and tf32 (TF32 is a backend flag, set_tf32);
    bf16 autocast on CPU, CUDA (AMP; bf16 needs no gradient scaler, unlike fp16) and MPS."""
    if check_precision(precision) != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def set_tf32(enabled: bool) -> None:
    """Let a GPU's float32 matrix products and convolutions use TF32 or not. torch's defaults differ
    (cuDNN convolutions on, matmul off), so fp32 numbers on an Ampere/Hopper GPU would silently differ
    from the CPU's, and an INT16 fake-quant grid would not survive a convolution: every job sets both,
    from its precision (the matmul flag also sets torch's ``float32_matmul_precision``)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def tf32_enabled() -> bool:
    """Whether TF32 is allowed (for convolutions or matrix products) now: recorded in provenance."""
    return bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown CPU" where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return "unknown CPU"


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: without either, bf16 arithmetic on the CPU is emulated and slower than
    fp32 (benchmarks/training_speed.py on an AVX2-only AMD EPYC: a CNN8 training step 16x slower)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def configure_backends(device: torch.device, deterministic: bool = True, stable_shapes: bool = True) -> None:
    """cuDNN autotuning picks the fastest convolution per shape, but the pick (and so the result) can
    change from run to run: it is only on when determinism was not asked for, and only where batch
    shapes are stable (training): attacks shrink their batch as samples fall, and each new shape
    would be autotuned again. TF32 is off until a stage's precision asks for it (set_tf32). No
    effect on a CPU."""
    torch.backends.cudnn.benchmark = not deterministic and stable_shapes
    torch.backends.cudnn.deterministic = deterministic
    set_tf32(False)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to ``device``. To a GPU it goes through pinned (page-locked) memory with a
    non-blocking copy, so the transfer overlaps with the GPU's work; on the CPU it is returned as is."""
    if device.type != "cuda" or tensor.device.type == "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def peak_gpu_mb(device: torch.device | str) -> float | None:
    """Peak CUDA memory this process allocated on ``device`` so far, in MB; None off CUDA."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (a job is one process: this is its peak)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # macOS: bytes; Linux: kB
