"""Checkpoint and metrics I/O. Every write is atomic (temporary file in the same folder, then
rename), so a killed job never leaves a file that looks complete. Checkpoints are plain dicts of
tensors and JSON-like values, loaded with ``weights_only=True`` (no pickled code ever runs)."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import torch

CHECKPOINT_FORMAT = "advfine-checkpoint-1"


class ArtifactError(RuntimeError):
    """A checkpoint or metrics file is missing or unreadable; the message names it."""


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def read_json(path: str | Path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: file not found; re-run the stage that makes it (snakemake recreates it)")
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: not valid JSON ({err}); delete it and re-run snakemake") from err


def save_tensor_file(path: str | Path, payload: dict) -> None:
    """torch.save a dict of tensors and plain values, atomically."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def torch_load_weights_only(path: str | Path, what: str, error: type[Exception], advice: str = ""):
    """``torch.load(path, weights_only=True)`` on the CPU (pickled code never runs); any failure (torch
    raises several types for truncated or unsafe files) becomes ``error`` naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise error(f"{what} {path} cannot be loaded safely ({type(err).__name__}: "
                    f"{str(err).splitlines()[0]}). {advice}".rstrip()) from err


def load_tensor_file(path: str | Path, fmt: str, what: str, error: type[Exception] | None = None) -> dict:
    """Load a file written by ``save_tensor_file`` with ``weights_only=True`` (pickled code never runs)
    and check its ``format``. A missing, truncated or foreign file raises ``error`` naming it."""
    error = error or ArtifactError
    path = Path(path)
    if not path.exists():
        raise error(f"{what} {path} not found; re-run snakemake to recreate it")
    payload = torch_load_weights_only(
        path, what, error, "It may be truncated or not written by advfine: delete it and re-run snakemake.")
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise error(f"{what} {path} is not an advfine file of format {fmt}")
    return payload


def save_checkpoint(path: str | Path, state_dict: dict, arch: dict, quant: dict | None = None,
                    extra: dict | None = None) -> None:
    """Weights + the arch dict that rebuilds the model (+ quantization state for fake-quant models)."""
    save_tensor_file(path, {"format": CHECKPOINT_FORMAT, "arch": arch, "state_dict": state_dict,
                            "quant": quant, "extra": extra or {}})


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint safely; a missing, truncated or foreign file raises ArtifactError naming it."""
    return load_tensor_file(path, CHECKPOINT_FORMAT, "checkpoint")


def load_model(path: str | Path):
    """Rebuild the model stored in a checkpoint (fake-quant models come back quantized).
    Returns (model in eval mode, checkpoint dict)."""
    from .models import build_model

    ckpt = load_checkpoint(path)
    if ckpt["quant"] is not None:
        from .compress import restore_quantized

        model = restore_quantized(ckpt["arch"], ckpt["state_dict"], ckpt["quant"])
    else:
        model = build_model(ckpt["arch"])
        model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


def config_hash(config: dict) -> str:
    """Short stable hash of a config (or of part of one)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_commit(repo_dir: str | Path | None = None) -> str:
    """HEAD of the project's git checkout ('+dirty' when tracked files changed), or 'unknown'."""
    repo_dir = Path(repo_dir or Path(__file__).resolve().parents[2])
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
    from .gpu_pool import visible_gpu_ids

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
        "device": str(device),
        "git_commit": git_commit(),
        "versions": {name: _version(name) for name in
                     ("torch", "torchvision", "nni", "numpy", "snakemake", "scikit-learn")}
        | {"python": platform.python_version()},
        "host": socket.gethostname(),
        "gpu": _physical_gpu(device),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),  # the GPUs a scheduler gave the job
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
