"""Models. Inputs are images in [0, 1]; normalization is the model's first layer, so attacks
and their epsilon live in pixel space.

Every model is rebuilt from a plain ``arch`` dict (JSON-friendly), which is what checkpoints store:
a pruned CNN8 is the same class with fewer channels.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

# The paper's 8-layer CNN (FACTS.md): six 3x3 convs, strides 1,2,1,2,1,2, then 2 linear layers.
CNN8_CONV_CHANNELS = (32, 32, 64, 64, 128, 128)
CNN8_STRIDES = (1, 2, 1, 2, 1, 2)
CNN8_HIDDEN = 128


class Normalize(nn.Module):
    """Per-channel (x - mean) / std as buffers, so it travels with the weights."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class CNN8(nn.Module):
    """Conv(1->32) Conv(32->32,s2) Conv(32->64) Conv(64->64,s2) Conv(64->128) Conv(128->128,s2),
    all 3x3/pad 1/ReLU, then Linear(C*(H/8)*(W/8) -> 128), ReLU, Linear(128 -> classes).
    ``conv_channels`` may be smaller than the defaults: that is how a pruned model is rebuilt."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: int = 28,
        conv_channels: tuple[int, ...] = CNN8_CONV_CHANNELS,
        hidden: int = CNN8_HIDDEN,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ):
        super().__init__()
        if len(conv_channels) != 6:
            raise ValueError(f"CNN8 needs 6 conv channel counts, got {list(conv_channels)}")
        self.normalize = Normalize(mean or [0.5] * in_channels, std or [0.5] * in_channels)
        layers: list[nn.Module] = []
        c_in = in_channels
        size = input_size
        for c_out, stride in zip(conv_channels, CNN8_STRIDES):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.ReLU()]
            c_in = c_out
            size = (size + 2 - 3) // stride + 1
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(c_in * size * size, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # He initialization for the ReLU layers: with PyTorch's default (a smaller variance) this
        # 8-layer network without BatchNorm sits on a loss plateau for hundreds of SGD steps, which
        # small datasets (digits: ~21 steps an epoch) never get past.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.normalize(x))
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


ARCHITECTURES = {"cnn8": CNN8}


def default_arch(name: str, in_channels: int, num_classes: int, input_size: int,
                 mean: list[float], std: list[float]) -> dict:
    """The arch dict of an unpruned model of the given family for a dataset."""
    if name != "cnn8":
        raise ValueError(f"unknown arch {name!r}; known: {sorted(ARCHITECTURES)}")
    return {
        "name": "cnn8",
        "in_channels": in_channels,
        "num_classes": num_classes,
        "input_size": input_size,
        "conv_channels": list(CNN8_CONV_CHANNELS),
        "hidden": CNN8_HIDDEN,
        "mean": list(mean),
        "std": list(std),
    }


def build_model(arch: dict) -> nn.Module:
    """Rebuild a model from its arch dict (as stored in a checkpoint)."""
    arch = copy.deepcopy(arch)
    name = arch.pop("name")
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown arch {name!r}; known: {sorted(ARCHITECTURES)}")
    arch["conv_channels"] = tuple(arch["conv_channels"])
    return ARCHITECTURES[name](**arch)


def arch_of(model: nn.Module, base_arch: dict) -> dict:
    """The arch dict that rebuilds ``model`` (e.g. after filters were physically removed)."""
    arch = copy.deepcopy(base_arch)
    if arch["name"] == "cnn8":
        arch["conv_channels"] = [m.out_channels for m in model.features if isinstance(m, nn.Conv2d)]
        arch["hidden"] = model.fc1.out_features
    return arch


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_outputs(model: nn.Module) -> list[str]:
    """Names of the modules whose outputs are the paper's 'layers' 1..8 (for feature analysis)."""
    convs = [f"features.{i}" for i, m in enumerate(model.features) if isinstance(m, nn.ReLU)]
    return convs + ["relu", "fc2"]
