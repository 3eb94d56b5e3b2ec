"""Datasets as in-memory tensors: images float32 in [0, 1], shape N x C x H x W; labels int64.

The prepare_data stage reads a raw dataset once (``datasets.py``) and writes it as one tensor file;
every other job loads that file here (``load_prepared``) in milliseconds. The datasets are small
(MNIST- and CIFAR-sized), so a per-item DataLoader would only add overhead: batches are slices of a
tensor (``iterate_batches``), augmented as whole batches (``augment_batch``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from advfine.core.files import load_tensor_file, save_tensor_file

DATASET_FORMAT = "advfine-dataset-1"


@dataclass
class Dataset:
    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: list[float]  # per-channel statistics the model normalizes with
    std: list[float]

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def input_size(self) -> int:
        return self.train_x.shape[-1]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One input's shape, C x H x W."""
        return tuple(self.train_x.shape[1:])


class DataError(RuntimeError):
    """A dataset cannot be found or read; the message names the file and what to do."""


def save_prepared(dataset: Dataset, path: str | Path) -> None:
    """Write the prepared tensors once, so every job loads them in milliseconds instead of
    re-reading and re-processing the raw files."""
    save_tensor_file(path, {"format": DATASET_FORMAT, "name": dataset.name, "train_x": dataset.train_x,
                            "train_y": dataset.train_y, "test_x": dataset.test_x, "test_y": dataset.test_y,
                            "num_classes": dataset.num_classes, "mean": dataset.mean, "std": dataset.std})


def load_prepared(path: str | Path) -> Dataset:
    """Load what ``save_prepared`` wrote (safely: weights_only)."""
    p = load_tensor_file(path, DATASET_FORMAT, "prepared dataset", DataError)
    return Dataset(p["name"], p["train_x"], p["train_y"], p["test_x"], p["test_y"], p["num_classes"],
                   p["mean"], p["std"])


def augment_batch(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """The standard CIFAR augmentation on a whole batch, on its device: a random H x W crop of the image
    zero-padded by ``padding`` pixels, then a horizontal flip with probability 1/2. Draws from
    ``generator`` (on x's device) only, so runs are reproducible. Written here because torchvision's
    RandomCrop/RandomHorizontalFlip use the global RNG and one crop for a whole batch."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=x.device)
    left = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=x.device)
    flip = torch.rand(n, 1, generator=generator, device=x.device) < 0.5
    rows = top + torch.arange(h, device=x.device)  # n x h
    cols = left + torch.where(flip, torch.arange(w - 1, -1, -1, device=x.device), torch.arange(w, device=x.device))
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    # Advanced indexing puts the indexed dims first: n x h x w x C, then back to N x C x H x W.
    return padded[batch, :, rows.view(n, h, 1), cols.view(n, 1, w)].permute(0, 3, 1, 2)


def iterate_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False,
                    generator: torch.Generator | None = None):
    """Yield (x, y) slices; with shuffle, a new permutation from ``generator`` each call."""
    n = len(y)
    if shuffle:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield x[idx], y[idx]
    else:
        for start in range(0, n, batch_size):
            yield x[start:start + batch_size], y[start:start + batch_size]
