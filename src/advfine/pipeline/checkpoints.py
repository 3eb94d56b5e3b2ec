"""Checkpoints of whole models: the weights plus the ``arch`` dict that rebuilds the network (a pruned
model's channel counts) and, for fake-quantized models, their quantization state. Above ``models``
and ``compress`` in the package's layers; the files themselves are ``files`` tensor files, loaded
with ``weights_only=True``."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from advfine.core.files import load_tensor_file, save_tensor_file
from advfine.core.models import build_model
from advfine.core.quantize import is_quantized, quant_state, restore_quantized

CHECKPOINT_FORMAT = "advfine-checkpoint-1"


def save_checkpoint(path: str | Path, state_dict: dict, arch: dict, quant: dict | None = None,
                    extra: dict | None = None) -> None:
    """Weights + the arch dict that rebuilds the model (+ quantization state for fake-quant models)."""
    save_tensor_file(path, {"format": CHECKPOINT_FORMAT, "arch": arch, "state_dict": state_dict,
                            "quant": quant, "extra": extra or {}})


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint safely; a missing, truncated or foreign file raises ArtifactError naming it."""
    return load_tensor_file(path, CHECKPOINT_FORMAT, "checkpoint")


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the model stored in a checkpoint (fake-quant models come back quantized).
    Returns (model in eval mode, checkpoint dict)."""
    ckpt = load_checkpoint(path)
    if ckpt["quant"] is not None:
        try:
            model = restore_quantized(ckpt["arch"], ckpt["state_dict"], ckpt["quant"])
        except ValueError as err:  # name the file: the user deletes it to have its job re-run
            raise ValueError(f"{path}: {err}") from None
    else:
        model = build_model(ckpt["arch"])
        model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


def save_model(path: str | Path, model: nn.Module, arch: dict, extra: dict | None = None) -> None:
    """Save ``model`` (plain or fake-quantized) so that ``load_model`` rebuilds it."""
    quant = quant_state(model) if is_quantized(model) else None
    save_checkpoint(path, model.state_dict(), arch, quant, extra)
