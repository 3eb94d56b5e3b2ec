"""Models. Inputs are images in [0, 1]; normalization is the model's first layer, so attacks
and their epsilon live in pixel space.

Every model is rebuilt from a plain ``arch`` dict (JSON-friendly), which is what checkpoints store:
a pruned CNN8 or ResNet-18 is the same class with fewer channels.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from advfine.core.files import torch_load_weights_only

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


# CIFAR ResNet-18 (He et al. 2016): BasicBlocks [2, 2, 2, 2], stage widths 64/128/256/512, strides 1/2/2/2.
RESNET18_STAGE_CHANNELS = (64, 128, 256, 512)
RESNET18_BLOCKS_PER_STAGE = 2


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU. Unlike torchvision's BasicBlock, the inner
    width (conv1's out-channels) is its own argument, since filter pruning shrinks it independently of
    the residual width. Module names match torchvision/timm (conv1, bn1, conv2, bn2, downsample.0/1), so
    their CIFAR ResNet-18 checkpoints load (see ``load_pretrained``)."""

    def __init__(self, in_channels: int, inner_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, inner_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner_channels)
        self.conv2 = nn.Conv2d(inner_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()  # not in-place: NNI's tracer and the residual add need the input intact
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 3x3 stem conv (stride 1, no max-pool), BN, ReLU, four stages of two BasicBlocks,
    adaptive average pooling, linear classifier. 11,173,962 parameters with 10 classes.

    Pruned widths: ``stage_channels[i]`` is the residual width of stage i (the stem's out-channels for
    stage 0; all conv2/shortcut outputs of a stage are added together, so they share it), and
    ``block_channels[i][j]`` is the inner width of block j of stage i."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        input_size: int = 32,  # only recorded in the arch dict (as for CNN8): adaptive pooling takes any size
        stage_channels: tuple[int, ...] = RESNET18_STAGE_CHANNELS,
        block_channels: tuple[tuple[int, ...], ...] | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ):
        super().__init__()
        if block_channels is None:
            block_channels = tuple((c,) * RESNET18_BLOCKS_PER_STAGE for c in stage_channels)
        if len(stage_channels) != 4 or len(block_channels) != 4 or any(
                len(b) != RESNET18_BLOCKS_PER_STAGE for b in block_channels):
            raise ValueError(f"ResNet18 needs 4 stage widths and 4 x {RESNET18_BLOCKS_PER_STAGE} block widths, "
                             f"got {list(stage_channels)} and {[list(b) for b in block_channels]}")
        self.normalize = Normalize(mean or [0.5] * in_channels, std or [0.5] * in_channels)
        self.conv1 = nn.Conv2d(in_channels, stage_channels[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stage_channels[0])
        self.relu = nn.ReLU()
        c_in = stage_channels[0]
        for i, (c_out, inner) in enumerate(zip(stage_channels, block_channels)):
            blocks = []
            for j, c_inner in enumerate(inner):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(c_in, c_inner, c_out, stride))
                c_in = c_out
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(self.normalize(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


ARCHITECTURES = {"cnn8": CNN8, "resnet18": ResNet18}


def default_arch(name: str, in_channels: int, num_classes: int, input_size: int,
                 mean: list[float], std: list[float]) -> dict:
    """The arch dict of an unpruned model of the given family for a dataset."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown arch {name!r}; known: {sorted(ARCHITECTURES)}")
    arch = {
        "name": name,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "input_size": input_size,
    }
    if name == "cnn8":
        arch |= {"conv_channels": list(CNN8_CONV_CHANNELS), "hidden": CNN8_HIDDEN}
    else:
        arch |= {"stage_channels": list(RESNET18_STAGE_CHANNELS),
                 "block_channels": [[c] * RESNET18_BLOCKS_PER_STAGE for c in RESNET18_STAGE_CHANNELS]}
    return arch | {"mean": list(mean), "std": list(std)}


def build_model(arch: dict) -> nn.Module:
    """Rebuild a model from its arch dict (as stored in a checkpoint)."""
    arch = copy.deepcopy(arch)
    name = arch.pop("name")
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown arch {name!r}; known: {sorted(ARCHITECTURES)}")
    if name == "cnn8":
        arch["conv_channels"] = tuple(arch["conv_channels"])
    else:
        arch["stage_channels"] = tuple(arch["stage_channels"])
        arch["block_channels"] = tuple(tuple(b) for b in arch["block_channels"])
    return ARCHITECTURES[name](**arch)


def arch_of(model: nn.Module, base_arch: dict) -> dict:
    """The arch dict that rebuilds ``model`` (e.g. after filters were physically removed)."""
    arch = copy.deepcopy(base_arch)
    if arch["name"] == "cnn8":
        arch["conv_channels"] = [m.out_channels for m in model.features if isinstance(m, nn.Conv2d)]
        arch["hidden"] = model.fc1.out_features
    elif arch["name"] == "resnet18":
        stages = [getattr(model, f"layer{i + 1}") for i in range(4)]
        arch["stage_channels"] = [stage[0].conv2.out_channels for stage in stages]
        arch["block_channels"] = [[block.conv1.out_channels for block in stage] for stage in stages]
        # Residual outputs of a stage are summed, so they must share one width (true after NNI speedup,
        # which keeps the union of the masks of channels that are added together).
        residual_widths = [[model.conv1.out_channels] + [b.conv2.out_channels for b in stages[0]]]
        residual_widths += [[b.conv2.out_channels for b in stage]
                            + [b.downsample[0].out_channels for b in stage if b.downsample is not None]
                            for stage in stages[1:]]
        if any(len(set(widths)) != 1 for widths in residual_widths):
            raise ValueError(f"residual widths differ within a stage: {residual_widths}")
    return arch


def _our_key_name(key: str) -> str:
    """A foreign state_dict key in our naming: drop DataParallel's 'module.' prefix; the other common
    CIFAR ResNet-18 code (kuangliu/pytorch-cifar) calls the shortcut 'shortcut' and the classifier 'linear'."""
    key = key.removeprefix("module.").replace(".shortcut.", ".downsample.")
    return "fc." + key.removeprefix("linear.") if key.startswith("linear.") else key


def load_pretrained(model: nn.Module, path: str | Path) -> nn.Module:
    """Load pretrained weights from ``path`` into ``model`` in place (and return it).

    Accepts a plain state_dict, a dict holding it under 'state_dict' or 'model' (also our own checkpoints
    from ``checkpoints.save_checkpoint``), with or without DataParallel's 'module.' prefixes; torchvision/timm
    and kuangliu-style ResNet-18 names. Loaded with ``weights_only=True``, so no pickled code runs.
    The model keeps its own ``normalize.mean/std`` buffers when the file has none (foreign files): inputs
    stay in [0, 1] and the model normalizes them with the dataset's statistics, which must be those the
    weights were trained with. Raises ValueError naming the file and the mismatched keys/shapes when it does not fit."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"pretrained checkpoint {path} not found")
    state = torch_load_weights_only(path, "pretrained checkpoint", ValueError)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"pretrained checkpoint {path} holds no state_dict of tensors")
    renamed = {_our_key_name(key): value for key, value in state.items()}
    own = model.state_dict()
    for key in own:  # foreign files lack our normalization buffers, older ones BatchNorm's step counter
        if key.startswith("normalize.") or key.endswith(".num_batches_tracked"):
            renamed.setdefault(key, own[key])
    missing = sorted(set(own) - set(renamed))
    unexpected = sorted(set(renamed) - set(own))
    wrong_shape = sorted(f"{k}: file {tuple(renamed[k].shape)} vs model {tuple(own[k].shape)}"
                         for k in set(own) & set(renamed) if renamed[k].shape != own[k].shape)
    if missing or unexpected or wrong_shape:
        def show(keys):
            return ", ".join(keys[:10]) + (f" ... ({len(keys)} in all)" if len(keys) > 10 else "") or "none"
        raise ValueError(f"pretrained checkpoint {path} does not fit the {type(model).__name__} model: "
                         f"missing keys: {show(missing)}; unexpected keys: {show(unexpected)}; "
                         f"shape mismatches: {show(wrong_shape)}")
    model.load_state_dict(renamed)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_outputs(model: nn.Module) -> list[str]:
    """Names of the CNN8 modules whose outputs are the paper's 'layers' 1..8 (for feature analysis): the
    ReLU after each conv and after fc1, then fc2. A fake-quant model (quantize.py) has each ReLU fused
    into its layer: then that layer (its output is the ReLU's, before the output rounding)."""
    modules = dict(model.named_modules())
    convs = [name for name, m in modules.items() if name.startswith("features.") and isinstance(m, nn.Conv2d)]
    relus = [f"features.{int(name.split('.')[1]) + 1}" for name in convs] + ["relu"]
    layers = convs + ["fc1"]
    return [relu if isinstance(modules.get(relu), nn.ReLU) else layer for relu, layer in zip(relus, layers)] + ["fc2"]
