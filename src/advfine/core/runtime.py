"""Where and how computations run: device choice, numeric precision, backend flags, host-to-device
copies, threads, seeds."""
from __future__ import annotations

import contextlib
import os
import random
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch


# The device node the NVIDIA driver creates for the first GPU (a module constant so tests can point it elsewhere)
NVIDIA_DEVICE_NODE = Path("/dev/nvidia0")


def gpu_expected(env: dict | None = None, device_node: Path | None = None) -> str | None:
    """Evidence that this process was given an NVIDIA GPU, in words, or None: ``CUDA_VISIBLE_DEVICES`` naming
    a device, SLURM's GPU variables, or the driver's device node (outside SLURM jobs only: a job given no
    GPU on a GPU node still sees the node). ``device: auto`` must not quietly run on the CPU where there
    is such evidence and CUDA does not work."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible and visible not in ("-1", "NoDevFiles"):
        return f"CUDA_VISIBLE_DEVICES={visible}"
    for name in ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        if env.get(name, "").strip():
            return f"{name}={env[name]}"
    try:
        if int(env.get("SLURM_GPUS_ON_NODE", "0")) > 0:
            return f"SLURM_GPUS_ON_NODE={env['SLURM_GPUS_ON_NODE']}"
    except ValueError:
        pass
    node = NVIDIA_DEVICE_NODE if device_node is None else Path(device_node)
    if "SLURM_JOB_ID" not in env and node.exists():
        return f"{node} exists"
    return None


def nvidia_driver() -> str | None:
    """What the NVIDIA driver says about itself: nvidia-smi's driver version and compute capability per GPU,
    else the first line of /proc/driver/nvidia/version; None when neither is there."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            gpus = [line.split(",") for line in out.stdout.strip().splitlines()]
            return "nvidia-smi: " + "; ".join(f"driver {g[0].strip()}, compute capability {g[-1].strip()}"
                                               for g in gpus)
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return Path("/proc/driver/nvidia/version").read_text().splitlines()[0].strip()
    except (OSError, IndexError):
        return None


def _runs_on(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a wheel built for ``arch_list`` has kernels a GPU of ``capability`` runs: machine code (sm_XY)
    runs on the same major version at the same or a later minor one; PTX (compute_XY) is compiled for any
    later GPU."""
    device = 10 * capability[0] + capability[1]
    for arch in arch_list:
        kind, _, number = arch.partition("_")
        try:
            code = int(number.rstrip("af"))
        except ValueError:
            continue
        if kind == "sm" and code // 10 == device // 10 and code <= device:
            return True
        if kind == "compute" and code <= device:
            return True
    return False


def cuda_diagnosis(index: int | None = None) -> str | None:
    """Why CUDA cannot run this torch's kernels here (on GPU ``index``, default the current one), in words;
    None when nothing is found wrong."""
    install = (f"pip install torch=={torch.__version__.split('+')[0]} --index-url "
               "https://download.pytorch.org/whl/cuXYZ (cuXYZ: a CUDA version the driver supports, e.g. cu126; "
               "see https://pytorch.org/get-started/locally/)")
    hip = getattr(torch.version, "hip", None)
    if torch.version.cuda is None and hip is None:
        return (f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None); install a CUDA "
                f"build: {install}")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else f"ROCm {hip}"
        driver = nvidia_driver() or "no NVIDIA driver found: no nvidia-smi, no /proc/driver/nvidia/version"
        return (f"torch {torch.__version__} is built for {build} but finds no usable GPU: the driver is missing "
                f"or too old for {build}, or no GPU is visible to this process ({driver}); update the driver, "
                f"or install a build for an older CUDA: {install}")
    arch_list = torch.cuda.get_arch_list()
    if torch.version.cuda is None or not arch_list:
        return None  # ROCm, or a build that does not list its kernels: nothing to compare
    try:
        capability = torch.cuda.get_device_capability(index)
        name = torch.cuda.get_device_name(index)
    except (RuntimeError, AssertionError):
        return None  # the GPU cannot be asked; torch's own error comes with its first use
    if _runs_on(capability, arch_list):
        return None
    sm = f"sm_{capability[0]}{capability[1]}"
    return (f"the GPU ({name}) has compute capability {sm}, but torch {torch.__version__} has kernels for "
            f"{' '.join(arch_list)} only, so its first kernel would fail; install a torch build whose kernels "
            f"include {sm} (older releases and CUDA versions cover older GPUs: "
            "https://pytorch.org/get-started/previous-versions/)")


def resolve_device(name: str = "auto", env: dict | None = None) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU, but refuses the CPU when this process was given an
    NVIDIA GPU that CUDA cannot use (``gpu_expected``; the error says why, ``cuda_diagnosis``). An explicit
    name is checked to exist here and, for CUDA, to run this torch's kernels (every job checks when it
    starts; advfine.pipeline.config.check_device before jobs run on this machine)."""
    if name == "auto":
        if torch.cuda.is_available():
            problem = cuda_diagnosis()
            if problem:
                raise RuntimeError(f"device: 'auto' found a GPU it cannot use: {problem}")
            return torch.device("cuda")
        evidence = gpu_expected(env)
        if evidence:
            raise RuntimeError(f"device: 'auto' found no usable CUDA device, but this job was given a GPU "
                               f"({evidence}): {cuda_diagnosis()}. Fix that, or set device: cpu to run on the "
                               "CPU on purpose")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device: {name!r} was asked for but CUDA is not available: {cuda_diagnosis()}. "
                           "Or use device: auto or cpu")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        visible = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
        raise RuntimeError(f"device: {name!r} was asked for but {count} CUDA device(s) are visible here (cuda:0 to "
                           f"cuda:{count - 1}" + (f", CUDA_VISIBLE_DEVICES={visible}" if visible is not None else "")
                           + "); use device: auto, cuda, or cuda:N with N below that count")
    if name.startswith("cuda"):
        problem = cuda_diagnosis(int(name[5:]) if name.startswith("cuda:") else None)
        if problem:
            raise RuntimeError(f"device: {name!r} cannot be used: {problem}")
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
