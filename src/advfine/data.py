"""Datasets as in-memory tensors: images float32 in [0, 1], shape N x C x H x W; labels int64.

The datasets here are small (MNIST-sized), so a per-item DataLoader would only add overhead:
batches are slices of a tensor (see ``iterate_batches``).
"""
from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


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


class DataError(RuntimeError):
    """A dataset cannot be found or read; the message names the file and what to do."""


def load_digits_tensors(image_size: int, test_fraction: float, split_seed: int):
    """scikit-learn's 1,797 real 8x8 handwritten digits (shipped with the package, no download),
    scaled to [0, 1] and upsampled to image_size so the paper's 28x28 CNN applies.
    The split is stratified and fixed by split_seed (independent of the training seed)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
        x = x.clamp(0.0, 1.0)
    y = torch.tensor(digits.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=test_fraction, random_state=split_seed, stratify=digits.target
    )
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _unpack_local_gz(raw_dir: Path) -> None:
    """Unpack raw .gz files already on disk (no network). torchvision only does this inside
    download(), which we must not call when the user said download: false."""
    for name in FASHION_MNIST_FILES:
        target = raw_dir / name
        gz = raw_dir / f"{name}.gz"
        if not target.exists() and gz.exists():
            tmp = target.with_suffix(".tmp")
            with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            tmp.replace(target)


def load_fashion_mnist_tensors(data_root: str | Path, download: bool):
    """torchvision's FashionMNIST. Offline, put the four official .gz files (or their unpacked
    versions) in ``{data_root}/FashionMNIST/raw/``; with download: true, torchvision fetches them."""
    from torchvision.datasets import FashionMNIST

    root = Path(data_root)
    raw_dir = root / "FashionMNIST" / "raw"
    if raw_dir.is_dir():
        try:
            _unpack_local_gz(raw_dir)
        except (OSError, EOFError) as err:
            raise DataError(f"cannot unpack Fashion-MNIST files in {raw_dir}: {err}. "
                            "Replace the damaged .gz file with the official one.") from err
    missing = [n for n in FASHION_MNIST_FILES if not (raw_dir / n).exists()]
    if missing and not download:
        raise DataError(
            f"Fashion-MNIST not found: missing {', '.join(str(raw_dir / m) for m in missing)}. "
            "Copy or link the official .gz files there, or set data.download: true in the config."
        )
    try:
        train = FashionMNIST(str(root), train=True, download=download)
        test = FashionMNIST(str(root), train=False, download=download)
    except (RuntimeError, ValueError, OSError, EOFError) as err:
        raise DataError(f"cannot read Fashion-MNIST under {raw_dir}: {err}. "
                        "Check the files (truncated?) or set data.download: true.") from err

    def to_float(images: torch.Tensor) -> torch.Tensor:
        return images.unsqueeze(1).float().div_(255.0)

    return to_float(train.data), train.targets.long(), to_float(test.data), test.targets.long()


def _subset(x: torch.Tensor, y: torch.Tensor, n: int | None, seed: int):
    """A fixed random subset of n items (all of them if n is None or too large)."""
    if n is None or n >= len(y):
        return x, y
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(y), generator=g)[:n].sort().values
    return x[idx], y[idx]


def load_dataset(cfg: dict) -> Dataset:
    """Load the dataset described by the config's ``data`` section."""
    name = cfg["name"]
    if name == "digits":
        tx, ty, vx, vy = load_digits_tensors(cfg.get("image_size", 28), cfg.get("test_fraction", 0.25),
                                             cfg.get("split_seed", 0))
    elif name == "fashion_mnist":
        tx, ty, vx, vy = load_fashion_mnist_tensors(cfg.get("data_root", "data"), cfg.get("download", False))
    else:
        raise ValueError(f"data.name: unknown dataset {name!r}; known: digits, fashion_mnist")
    split_seed = cfg.get("split_seed", 0)
    tx, ty = _subset(tx, ty, cfg.get("train_subset"), split_seed)
    vx, vy = _subset(vx, vy, cfg.get("test_subset"), split_seed + 1)
    return Dataset(name, tx, ty, vx, vy, num_classes=10,
                   mean=[0.5] * tx.shape[1], std=[0.5] * tx.shape[1])


DATASET_FORMAT = "advfine-dataset-1"


def save_prepared(dataset: Dataset, path: str | Path) -> None:
    """Write the prepared tensors once, so every job loads them in milliseconds instead of
    re-reading and re-processing the raw files (and importing scikit-learn or torchvision)."""
    from .artifacts import save_tensor_file

    save_tensor_file(path, {"format": DATASET_FORMAT, "name": dataset.name, "train_x": dataset.train_x,
                            "train_y": dataset.train_y, "test_x": dataset.test_x, "test_y": dataset.test_y,
                            "num_classes": dataset.num_classes, "mean": dataset.mean, "std": dataset.std})


def load_prepared(path: str | Path) -> Dataset:
    """Load what ``save_prepared`` wrote (safely: weights_only)."""
    from .artifacts import load_tensor_file

    p = load_tensor_file(path, DATASET_FORMAT, "prepared dataset", DataError)
    return Dataset(p["name"], p["train_x"], p["train_y"], p["test_x"], p["test_y"], p["num_classes"],
                   p["mean"], p["std"])


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
