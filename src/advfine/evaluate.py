"""Clean and robust accuracy.

Robust accuracy counts a test sample only if the model classifies it correctly both clean and
under every attack it faces, so robust <= clean always holds. Samples already misclassified are
not attacked: they are non-robust whatever the attack does, and skipping them saves time.
"""
from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from .attacks import PGDAttack
from .data import iterate_batches
from .runtime import make_generator


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    model.eval()
    out = [model(xb.to(device)).argmax(1).cpu() for xb, _ in iterate_batches(x, x, batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                   device: torch.device) -> float:
    return (predict(model, x, batch_size, device) == y).float().mean().item()


def robust_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: PGDAttack,
                   batch_size: int, device: torch.device, seed: int,
                   source_model: nn.Module | None = None, desc: str = "attack") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (clean_correct, robust_correct) boolean vectors.

    The attack is computed on ``source_model`` (default: ``model`` itself, white-box); a different
    source gives a transfer attack, e.g. from the float twin of a fake-quantized model, whose
    straight-through gradient can otherwise mask the attack (FACTS.md)."""
    source_model = source_model if source_model is not None else model
    model.eval()
    generator = make_generator(seed, device)
    clean_ok, robust_ok = [], []
    n_batches = (len(y) + batch_size - 1) // batch_size
    for xb, yb in tqdm(iterate_batches(x, y, batch_size), total=n_batches, desc=desc,
                       mininterval=5.0, leave=False):
        xb, yb = xb.to(device), yb.to(device)
        with torch.no_grad():
            ok = model(xb).argmax(1) == yb
        rob = ok.clone()
        if ok.any():
            x_adv = attack(source_model, xb[ok], yb[ok], generator=generator)
            with torch.no_grad():
                rob[ok] = model(x_adv).argmax(1) == yb[ok]
        clean_ok.append(ok.cpu())
        robust_ok.append(rob.cpu())
    return torch.cat(clean_ok), torch.cat(robust_ok)


def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: PGDAttack, batch_size: int,
                   device: torch.device, seed: int, transfer_source: nn.Module | None = None) -> dict:
    """Clean accuracy and PGD robust accuracy; with ``transfer_source``, also the accuracy under
    attacks crafted on that model, and ``robust_acc`` becomes the per-sample worst case of both."""
    model.to(device)
    clean_ok, white_ok = robust_correct(model, x, y, attack, batch_size, device, seed, desc="PGD white-box")
    result = {"clean_acc": clean_ok.float().mean().item(), "robust_acc_whitebox": white_ok.float().mean().item(),
              "n_test": len(y)}
    robust_ok = white_ok
    if transfer_source is not None:
        transfer_source.to(device)
        _, transfer_ok = robust_correct(model, x, y, attack, batch_size, device, seed,
                                        source_model=transfer_source, desc="PGD transfer")
        result["robust_acc_transfer"] = transfer_ok.float().mean().item()
        robust_ok = white_ok & transfer_ok
    result["robust_acc"] = robust_ok.float().mean().item()
    return result
