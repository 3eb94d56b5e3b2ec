"""Clean and robust accuracy.

Robust accuracy counts a test sample only if the model classifies it correctly both clean and
under every attack it faces, so robust <= clean always holds. A sample is attacked only while it
is still standing: misclassified samples are non-robust whatever an attack does, and a sample an
earlier attack already broke needs no second attack. The numbers are the same as attacking
everything (each sample's random start is drawn once, for the whole test set, so it does not
depend on which samples are attacked together); the cost falls with the error rate.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn
from tqdm import tqdm

from .attacks import PGDAttack
from .data import iterate_batches
from .runtime import autocast, make_generator, place_model, to_device


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device,
            precision: str = "fp32") -> torch.Tensor:
    model.eval()
    with autocast(device, precision):
        out = [model(to_device(xb, device)).argmax(1).cpu() for xb, _ in iterate_batches(x, x, batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                   device: torch.device, precision: str = "fp32") -> float:
    return (predict(model, x, batch_size, device, precision) == y).float().mean().item()


def survives_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, candidates: torch.Tensor,
                    attack: PGDAttack, batch_size: int, device: torch.device, start_noise: torch.Tensor,
                    source_model: nn.Module | None = None, desc: str = "attack",
                    precision: str = "fp32") -> torch.Tensor:
    """Boolean per sample: a candidate whose attacked version ``model`` still classifies correctly.

    Only candidates are attacked, each from its own random start ``start_noise[i]`` (uniform in
    [0, 1), shaped like ``x``). The attack's gradients come from ``source_model`` (default:
    ``model`` itself, white-box); another source gives a transfer attack, e.g. from the float twin
    of a fake-quantized model, whose straight-through gradient can mask the attack (FACTS.md)."""
    source_model = source_model if source_model is not None else model
    model.eval()
    survived = torch.zeros_like(candidates)
    idx = candidates.nonzero().flatten()
    n_batches = (len(idx) + batch_size - 1) // batch_size
    for part in tqdm(idx.split(batch_size), total=n_batches, desc=desc, mininterval=5.0, leave=False):
        xb, yb, noise = to_device(x[part], device), to_device(y[part], device), to_device(start_noise[part], device)
        with autocast(device, precision):
            x_adv = attack(source_model, xb, yb, start_noise=noise)
            with torch.no_grad():
                survived[part] = (model(x_adv).argmax(1) == yb).cpu()
    return survived


def start_noise_for(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One uniform random start per test sample (on the CPU, so it is the same on any device)."""
    return torch.rand(x.shape, generator=generator, dtype=x.dtype)


def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: PGDAttack, batch_size: int,
                   device: torch.device, seed: int, transfer_source: nn.Module | None = None,
                   precision: str = "fp32") -> dict:
    """Clean accuracy and PGD robust accuracy. The white-box attack stops on a sample at the first
    iterate that fools the model (see ``pgd_linf``). With ``transfer_source``, the samples that
    survive it also face the attack crafted on that model (run to the last step: fooling the
    source says nothing about the target): ``robust_acc`` is the worst case of both, and
    ``robust_acc_whitebox - robust_acc`` measures what the white-box gradient missed."""
    place_model(model, device)
    generator = make_generator(seed, torch.device("cpu"))
    whitebox = replace(attack, stop_on_success=True)
    clean_ok = predict(model, x, batch_size, device, precision) == y
    robust_ok = survives_attack(model, x, y, clean_ok, whitebox, batch_size, device,
                                start_noise_for(x, generator), desc="PGD white-box", precision=precision)
    result = {"clean_acc": clean_ok.float().mean().item(), "robust_acc_whitebox": robust_ok.float().mean().item(),
              "n_test": len(y), "precision": precision, "attack": whitebox.describe() | {"transfer_from": None}}
    if transfer_source is not None:
        place_model(transfer_source, device).eval()
        robust_ok = survives_attack(model, x, y, robust_ok, replace(attack, stop_on_success=False), batch_size,
                                    device, start_noise_for(x, generator), source_model=transfer_source,
                                    desc="PGD transfer", precision=precision)
        result["attack"]["transfer_from"] = "float twin (same weights, no fake quantization)"
    result["robust_acc"] = robust_ok.float().mean().item()
    return result
