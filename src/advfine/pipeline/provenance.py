"""Where a result came from: the settings' hash, the seed, the code's git commit, package versions,
the host, the device, TF32 (with the physical GPU and the SLURM job id when there are)."""
from __future__ import annotations

import os
import platform
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path

import torch

from advfine.core.files import config_hash
from advfine.core.runtime import tf32_enabled
from advfine.pipeline.gpu_pool import visible_gpu_ids

PACKAGES = ("torch", "torchvision", "nni", "numpy", "snakemake", "scikit-learn")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_commit(repo_dir: str | Path | None = None) -> str:
    """HEAD of the git checkout whose src/advfine this package is ('+dirty' when tracked files changed),
    or 'unknown' for an installed copy, which belongs to no checkout, whatever folder holds it."""
    checkout = Path(__file__).resolve().parents[3]
    if repo_dir is None and not (checkout / ".git").exists():
        return "unknown"
    repo_dir = Path(repo_dir or checkout)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo_dir,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _physical_gpu(device: str) -> str | None:
    """The GPU id behind ``cuda:N``: entry N of the visible GPU ids (CUDA_VISIBLE_DEVICES when set)."""
    if not device.startswith("cuda"):
        return None
    index = int(device.partition(":")[2] or 0)
    visible = visible_gpu_ids()
    return visible[index] if index < len(visible) else str(index)


def provenance(config: dict, seed: int, device: torch.device | str) -> dict:
    """Where a result came from. ``config_hash`` covers the settings, not where they ran (the device
    is recorded beside it, with the physical GPU id and the SLURM job id when there are)."""
    device = str(device)
    return {
        "config_hash": config_hash({k: v for k, v in config.items() if k != "device"}),
        "seed": seed,
        "device": device,
        "deterministic": config["deterministic"],  # cuDNN autotuning off (GPU runs repeatable) or on
        "tf32": tf32_enabled(),  # whether a GPU's float32 convolutions and products ran in TF32
        "git_commit": git_commit(),
        "versions": {name: _version(name) for name in PACKAGES} | {"python": platform.python_version()},
        "host": socket.gethostname(),
        "gpu": _physical_gpu(device),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),  # the GPUs a scheduler gave the job
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
