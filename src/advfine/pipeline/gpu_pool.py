"""Which GPU a job uses when several run at once on one machine.

Snakemake's ``--resources gpu=2`` caps how many GPU jobs run together, but it assigns no device ids:
without help, every job would pick ``cuda:0``. Each job therefore takes a free GPU from a pool of
lock files, one per visible GPU. A lock file is named after the GPU's physical identity, its UUID,
not its index: SLURM (with cgroup device constraints) numbers each job's GPUs from 0, so two jobs on
one node may both see their own, different GPU as ``cuda:0``. The locks are ``flock`` locks: the
kernel releases them when the holder exits, even after SIGKILL, so a killed job never leaves a GPU
marked busy. The lock folder is shared by every user of the machine (mode 1777, as /tmp), so one
user's jobs see another's GPUs as busy.
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
from typing import Callable

import torch

from advfine.core.runtime import resolve_device

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


def gpu_identities(env: dict | None = None) -> list[str]:
    """The physical identity of each visible CUDA device, in torch's order (entry N is ``cuda:N``): its
    UUID as nvidia-smi writes it (``GPU-xxxxxxxx-...``), else (a torch without it) the device's
    ``CUDA_VISIBLE_DEVICES`` entry, else its index."""
    tokens = visible_gpu_ids(env, torch.cuda.device_count())
    identities = []
    for index in range(torch.cuda.device_count()):
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        if uuid is not None and str(uuid):
            identities.append(f"GPU-{uuid}")
        else:
            identities.append(tokens[index] if index < len(tokens) else str(index))
    return identities


def default_lock_dir(env: dict | None = None) -> Path:
    """Shared by every advfine job on the machine, whichever workflow or user it belongs to."""
    env = os.environ if env is None else env
    return Path(env.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "advfine-gpu-locks")


def _make_lock_dir(lock_dir: Path) -> None:
    """Create the lock folder writable by everyone with the sticky bit (as /tmp: anyone may add a lock
    file, only its owner may delete it). The umask strips those bits from mkdir's mode, hence chmod."""
    lock_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock_dir.mkdir()
    except FileExistsError:
        return
    os.chmod(lock_dir, 0o1777)


def _unusable(lock_dir: Path, path: Path, err: OSError) -> PermissionError:
    return PermissionError(
        f"the GPU lock folder {lock_dir} cannot be used ({path.name}: {err.strerror}); every user's advfine "
        f"jobs share it, so it must be writable by all (as /tmp: chmod 1777 {lock_dir}), or set {LOCK_DIR_ENV} "
        "to a folder of your own (jobs of other users then no longer see your GPUs as busy)")


def _open_lock(lock_dir: Path, path: Path) -> tuple[int, bool]:
    """An open file of the lock ``path`` and whether it is writable. The creator makes it 0666 so that
    other users can open it; a lock file another user made without that is opened read-only (flock
    works on a read-only file)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            pass
        except PermissionError as err:
            raise _unusable(lock_dir, path, err) from err
        else:
            os.fchmod(fd, 0o666)  # the umask stripped write for group and others
            return fd, True
        # it exists: open it without O_CREAT, which fs.protected_regular refuses on another user's file in
        # a sticky folder
        try:
            return os.open(path, os.O_RDWR), True
        except PermissionError:
            pass
        except FileNotFoundError:
            continue  # deleted meanwhile: create it
        try:
            return os.open(path, os.O_RDONLY), False
        except PermissionError as err:
            raise _unusable(lock_dir, path, err) from err
        except FileNotFoundError:
            continue


def _lock_file(lock_dir: Path, gpu_id: str) -> Path:
    return lock_dir / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', gpu_id)}.lock"


def _try_lock(lock_dir: Path, path: Path):
    """An open file holding an exclusive lock on ``path``, or None if another process holds it."""
    fd, writable = _open_lock(lock_dir, path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if writable:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a curious user
    return fd


@contextmanager
def gpu_slot(gpu_ids: list[str], lock_dir: Path | None = None, poll_s: float = 1.0,
             timeout_s: float | None = None):
    """Hold one free GPU of ``gpu_ids`` (physical identities, in the order of the visible devices) for
    the duration of the block; yields ``(index, gpu_id)``: the device to use is ``cuda:{index}``. Waits
    while all are taken (another workflow or user, or more jobs than GPUs), raising TimeoutError after
    ``timeout_s``."""
    if not gpu_ids:
        raise ValueError("gpu_slot needs at least one GPU id")
    lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    _make_lock_dir(lock_dir)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    waited = False
    while True:
        for index, gpu_id in enumerate(gpu_ids):
            path = _lock_file(lock_dir, gpu_id)
            fd = _try_lock(lock_dir, path)
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


def needs_pool(device_setting: str) -> bool:
    """A job takes a GPU from the pool when its device is ``auto`` or plain ``cuda`` (an explicit
    ``cuda:N`` is the user's choice) and CUDA is available, under SLURM too (its GPUs are told apart
    by UUID)."""
    return device_setting in ("auto", "cuda") and torch.cuda.is_available()


@contextmanager
def job_device(device_setting: str, env: dict | None = None, lock_dir: Path | None = None,
               identities: Callable[[dict | None], list[str]] = gpu_identities, timeout_s: float | None = None):
    """The concrete device string a job uses, never ``auto``: ``cuda:{index}`` of a GPU held from the pool
    for the whole block when ``needs_pool``, else the setting resolved by ``runtime.resolve_device``
    (``cpu``, ``mps``, an explicit ``cuda:N``; it raises where the job was given a GPU CUDA cannot use).
    ``identities(env)`` lists the visible GPUs' physical identities (tests fake it)."""
    if not needs_pool(device_setting):
        yield str(resolve_device(device_setting, env))
        return
    with gpu_slot(identities(env), lock_dir, timeout_s=timeout_s) as (index, _):
        yield f"cuda:{index}"
