"""Reading the raw datasets (scikit-learn's digits, Fashion-MNIST, CIFAR-10) into a ``data.Dataset``.
Only the prepare_data stage needs this module, and with it scikit-learn and torchvision: every other
job loads the prepared tensor file through ``data.load_prepared``."""
from __future__ import annotations

import gzip
import pickle
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torchvision.datasets import CIFAR10, FashionMNIST

from advfine.core.catalog import NUM_CLASSES, image_shape
from advfine.core.data import DataError, Dataset


def load_digits_tensors(image_size: int, test_fraction: float, split_seed: int):
    """scikit-learn's 1,797 real 8x8 handwritten digits (shipped with the package, no download),
    scaled to [0, 1] and upsampled to image_size so the paper's 28x28 CNN applies.
    The split is stratified and fixed by split_seed (independent of the training seed)."""
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
            try:
                with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except (OSError, EOFError) as err:  # truncated or not gzip
                tmp.unlink(missing_ok=True)
                raise DataError(f"cannot unpack {gz}: {err}. Replace it with the official file "
                                "(or delete it and set data.download: true).") from err
            tmp.replace(target)


def load_fashion_mnist_tensors(data_root: str | Path, download: bool):
    """torchvision's FashionMNIST. Offline, put the four official .gz files (or their unpacked
    versions) in ``{data_root}/FashionMNIST/raw/``; with download: true, torchvision fetches them."""
    root = Path(data_root)
    raw_dir = root / "FashionMNIST" / "raw"
    if raw_dir.is_dir():
        _unpack_local_gz(raw_dir)
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


class _NumpyArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a CIFAR batch file cannot run code on load."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # how Python 3 writes bytes at protocol 2 (the official files' protocol)

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not a plain CIFAR batch")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """One ``cifar-10-batches-py`` file: a pickled dict with 'data' (uint8, N x 3072, channel-major) and
    'labels'. latin1 decodes the Python 2 pickles of the official files (as torchvision does)."""
    with open(path, "rb") as f:
        entry = _NumpyArrayUnpickler(f, encoding="latin1").load()
    entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
    return np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32), list(entry["labels"])


def load_cifar10_tensors(data_root: str | Path, download: bool):
    """CIFAR-10 from the official python batches in ``{data_root}/cifar-10-batches-py/``; with download: true
    and files missing, torchvision's CIFAR10 fetches, md5-checks and unpacks them there.

    The batches are read here rather than through ``CIFAR10(download=False)``: torchvision refuses any
    file whose md5 differs from the official one, which would rule out generated test files, and its
    plain pickle.load would run whatever code a damaged or foreign file holds."""
    root = Path(data_root)
    folder = root / CIFAR10.base_folder
    train_files = [name for name, _md5 in CIFAR10.train_list]
    test_files = [name for name, _md5 in CIFAR10.test_list]
    missing = [name for name in train_files + test_files if not (folder / name).exists()]
    if missing and not download:
        raise DataError(
            f"CIFAR-10 not found: missing {', '.join(str(folder / m) for m in missing)}. Unpack the official "
            f"cifar-10-python.tar.gz into {root} (it holds cifar-10-batches-py/), or set data.download: true.")
    if missing:
        try:
            CIFAR10(str(root), train=True, download=True)  # downloads and unpacks both splits
        except Exception as err:  # network, md5 and archive errors come in many types
            raise DataError(f"cannot download CIFAR-10 into {folder}: {err}. Without internet, unpack the "
                            f"official cifar-10-python.tar.gz into {root} by hand.") from err

    def read(names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for name in names:
            try:
                batch_images, batch_labels = _read_cifar_batch(folder / name)
            except (OSError, EOFError, ValueError, KeyError, AttributeError, pickle.UnpicklingError) as err:
                raise DataError(f"cannot read CIFAR-10 batch {folder / name}: {type(err).__name__}: {err}. "
                                "Replace it with the official file (truncated or damaged?).") from err
            if len(batch_images) != len(batch_labels):
                raise DataError(f"CIFAR-10 batch {folder / name} has {len(batch_images)} images but "
                                f"{len(batch_labels)} labels")
            images.append(batch_images)
            labels += batch_labels
        x = torch.from_numpy(np.concatenate(images)).float().div_(255.0)
        return x, torch.tensor(labels, dtype=torch.int64)

    return (*read(train_files), *read(test_files))


def _subset(x: torch.Tensor, y: torch.Tensor, n: int | None, seed: int):
    """A fixed random subset of n items (all of them if n is None or too large)."""
    if n is None or n >= len(y):
        return x, y
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(y), generator=g)[:n].sort().values
    return x[idx], y[idx]


def load_dataset(cfg: dict) -> Dataset:
    """Load the dataset described by the config's ``data`` section (complete: the schema fills defaults)."""
    name = cfg["name"]
    shape = image_shape(cfg)
    if name == "digits":
        tx, ty, vx, vy = load_digits_tensors(shape[-1], cfg["test_fraction"], cfg["split_seed"])
    elif name == "fashion_mnist":
        tx, ty, vx, vy = load_fashion_mnist_tensors(cfg["data_root"], cfg["download"])
    else:
        tx, ty, vx, vy = load_cifar10_tensors(cfg["data_root"], cfg["download"])
    if tx.shape[1:] != shape or vx.shape[1:] != shape:
        raise DataError(f"{name}: the images are {tuple(tx.shape[1:])}, not {shape} (advfine.core.catalog)")
    split_seed = cfg["split_seed"]
    tx, ty = _subset(tx, ty, cfg["train_subset"], split_seed)
    vx, vy = _subset(vx, vy, cfg["test_subset"], split_seed + 1)
    return Dataset(name, tx, ty, vx, vy, num_classes=NUM_CLASSES[name],
                   mean=[0.5] * tx.shape[1], std=[0.5] * tx.shape[1])


