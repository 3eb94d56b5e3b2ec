"""Which GPU a job uses when several run at once on one workstation.

Snakemake's ``--resources gpu=2`` caps how many GPU jobs run together, but it assigns no device ids:
without help, every job would pick ``cuda:0``. Each job therefore takes a free GPU from a pool of
lock files, one per GPU id visible to it (``CUDA_VISIBLE_DEVICES`` if set, else every CUDA device).
The locks are ``flock`` locks: the kernel releases them when the holder exits, even after SIGKILL,
so a killed job never leaves a GPU marked busy. Under SLURM the scheduler already gave the job its
own GPUs, so the pool is not used there (and SLURM may renumber each job's GPUs from 0).
"""
from __future__ import annotations

import fcntl
import logging
import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

log = logging.getLogger("advfine")

LOCK_DIR_ENV = "ADVFINE_GPU_LOCK_DIR"


def visible_gpu_ids(env: dict | None = None, device_count: int | None = None) -> list[str]:
    """The GPU ids a job may use: the entries of ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs; an empty
    value means none), else ``0 .. device_count-1`` (``torch.cuda.device_count()`` by default)."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [token.strip() for token in visible.split(",") if token.strip()]
    if device_count is None:
        device_count = torch.cuda.device_count()
    return [str(i) for i in range(device_count)]


def default_lock_dir(env: dict | None = None) -> Path:
    """Shared by every advfine job on the machine, whichever workflow it belongs to."""
    env = os.environ if env is None else env
    return Path(env.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "advfine-gpu-locks")


def _lock_file(lock_dir: Path, gpu_id: str) -> Path:
    return lock_dir / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', gpu_id)}.lock"


def _try_lock(path: Path):
    """An open file holding an exclusive lock on ``path``, or None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a curious user
    return fd


@contextmanager
def gpu_slot(gpu_ids: list[str], lock_dir: Path | None = None, poll_s: float = 1.0,
             timeout_s: float | None = None):
    """Hold one free GPU of ``gpu_ids`` for the duration of the block; yields ``(index, gpu_id)``:
    the device to use is ``cuda:{index}`` (its position among the visible devices). Waits while all
    are taken (another workflow, or more jobs than GPUs), raising TimeoutError after ``timeout_s``."""
    if not gpu_ids:
        raise ValueError("gpu_slot needs at least one GPU id")
    lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    waited = False
    while True:
        for index, gpu_id in enumerate(gpu_ids):
            path = _lock_file(lock_dir, gpu_id)
            fd = _try_lock(path)
            if fd is not None:
                log.info("using GPU %s (cuda:%d), lock %s", gpu_id, index, path)
                try:
                    yield index, gpu_id
                finally:
                    os.close(fd)  # releases the lock
                return
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"no free GPU among {gpu_ids} after {timeout_s} s (locks in {lock_dir})")
        if not waited:
            log.info("all GPUs %s are busy (locks in %s); waiting for one", gpu_ids, lock_dir)
            waited = True
        time.sleep(poll_s)


def needs_pool(device_setting: str, env: dict | None = None) -> bool:
    """A job takes a GPU from the pool when its device is ``auto`` or plain ``cuda`` (an explicit
    ``cuda:N`` is the user's choice), CUDA is available, and SLURM did not allocate its GPUs."""
    env = os.environ if env is None else env
    if device_setting not in ("auto", "cuda") or "SLURM_JOB_ID" in env:
        return False
    return torch.cuda.is_available()


@contextmanager
def job_device(device_setting: str, env: dict | None = None, lock_dir: Path | None = None):
    """The device string a job should use: ``cuda:{index}`` of a GPU held from the pool for the whole
    block when ``needs_pool``, else ``device_setting`` unchanged."""
    if not needs_pool(device_setting, env):
        yield device_setting
        return
    with gpu_slot(visible_gpu_ids(env), lock_dir) as (index, _):
        yield f"cuda:{index}"
