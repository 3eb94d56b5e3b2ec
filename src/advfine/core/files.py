"""Pure file I/O, the bottom layer of the package: atomic writes, JSON, tensor files loaded with
``weights_only=True``. Every write goes to a temporary file in the same folder and is renamed into
place, so a killed job never leaves a file that looks complete; tensor files are plain dicts of
tensors and JSON-like values, so loading one never runs pickled code."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch


class ArtifactError(RuntimeError):
    """A checkpoint, dataset or metrics file is missing or unreadable; the message names it."""


def current_umask() -> int:
    """The process's umask, read from /proc where the kernel shows it (setting it to read it back
    would briefly change it for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.
    The file gets the permissions a plain ``open(path, "w")`` would give (0o666 less the umask):
    mkstemp creates it 0o600, which would hide results from co-authors on a shared filesystem."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


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


def config_hash(config: dict) -> str:
    """Short stable hash of a config (or of part of one)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
