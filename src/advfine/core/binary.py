"""A real 1-bit (INT1) fake-quantization scheme, as binary networks do it (XNOR-Net, Rastegari et al.
2016; Bi-Real Net): torch's integer kernels stop at 8 bits and a 1-bit affine grid is degenerate.

* The **first and last layers** the forward runs stay in full precision (weights and inputs), as in
  XNOR-Net: the first sees the image (1-bit images would destroy it and the meaning of a pixel-space
  epsilon), the last makes the logits. They hold a small share of the weights and MACs.
* Weights of every other Conv2d/Linear: ``sign(w) * alpha`` with one ``alpha = mean |w|`` per output
  channel, computed from the float weights, never saved (kept in memory while they do not change and
  take no gradient, as in eval forwards and attacks: ``kept.KeptFromWeight``). sign(0) counts as +1.
* Their inputs take two levels {0, s} (they are ReLU outputs, so non-negative; a negative input maps
  to 0). One ``s`` per layer is the two-level Lloyd-Max level (``two_level_scale``), calibrated layer by
  layer in forward order on the inputs the binary model itself produces (float activations are far
  larger: calibrated on them, the last levels were so high that nearly every input became 0, measured
  on CNN8). In QAT it keeps tracking the activations in train mode (moving average, decay 0.99) and is
  frozen in eval mode; after PTQ it stays fixed. Layer outputs are not quantized separately.
* Gradients are straight-through: for weights d(sign(w))/dw = 1 for |w| <= 1 (XNOR-Net's clipped STE)
  plus the gradient through alpha; for activations the gradient of clamp(x, 0, s) (clipped STE).
  Forward values are exact: the straight-through terms are ``(t - t.detach())``, which adds exactly 0.

Without BatchNorm each binary layer shrinks the signal (alpha = mean |w| keeps sqrt(2/pi) of the
weights' std), so binary layers of the BN-free CNN8 learn slowly; README reports what CNN8 reaches.

The binary layers are subclasses of nn.Conv2d/nn.Linear keeping ``weight``/``bias`` as their float
parameters, so state_dict keys are those of the float model and cost hooks see them as Conv2d/Linear.
The level ``s`` is a non-persistent buffer (saved by ``quantize.quant_state``).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from advfine.core.kept import KeptFromWeight

EMA_DECAY = 0.99  # of the tracked activation level in QAT, as quantize.py tracks min/max
CALIBRATION_ITERATIONS = 20  # Lloyd iterations per calibration batch (from the mean of the positive values)
TRACKING_ITERATIONS = 2  # per training batch, warm-started from the current level
MIN_SCALE = torch.finfo(torch.float32).eps  # floor of the level: never divide by or clamp to 0


def two_level_scale(x: torch.Tensor, start: torch.Tensor | None = None,
                    iterations: int = CALIBRATION_ITERATIONS) -> torch.Tensor:
    """The level s of the quantizer q(x) = s * [x >= s/2] (levels {0, s}) that minimizes the squared
    error on ``x``: Lloyd's iteration with one level fixed at 0, s <- mean of the values >= s/2.
    Starts from ``start`` or from the mean of the positive values. Returns a 0-d tensor."""
    x = x.detach().float().flatten()
    if start is None:
        positive = x > 0
        s = (x * positive).sum() / positive.sum().clamp(min=1)
    else:
        s = start.detach().float()
    for _ in range(iterations):
        upper = x >= s / 2
        s = (x * upper).sum() / upper.sum().clamp(min=1)
    return s.clamp(min=MIN_SCALE)


def _binary_weight(w: torch.Tensor) -> torch.Tensor:
    alpha = w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)
    sign = torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
    clipped = w.clamp(-1.0, 1.0)
    return alpha * (sign + (clipped - clipped.detach()))


class BinaryLayer:
    """Shared part of BinaryConv2d and BinaryLinear (a mixin before the torch layer class).

    ``input_scale`` (buffer) is the activation level s (None: input not quantized); ``track_input_scale`` is True for QAT (s follows the activations in train mode)."""

    input_scale: torch.Tensor | None
    track_input_scale: bool

    def _init_binary(self, input_scale: torch.Tensor | None, track_input_scale: bool) -> None:
        scale = None if input_scale is None else input_scale.detach().clone().float().reshape(())
        self.register_buffer("input_scale", scale, persistent=False)  # quant_state saves it
        self.track_input_scale = bool(track_input_scale)
        self.kept_weight = KeptFromWeight()

    def binary_weight(self) -> torch.Tensor:
        """sign(w) * (mean |w| per output channel), with straight-through gradients."""
        return self.kept_weight.get(self.weight, _binary_weight)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Two levels {0, s}; the level is updated first when tracking in train mode."""
        if self.input_scale is None:
            return x
        if self.training and self.track_input_scale:
            with torch.no_grad():
                batch_scale = two_level_scale(x, start=self.input_scale, iterations=TRACKING_ITERATIONS)
                # a new tensor, not an in-place update: no version clash with graphs that saved the old one
                self.input_scale = EMA_DECAY * self.input_scale + (1 - EMA_DECAY) * batch_scale
        s = self.input_scale.to(x.dtype)
        clipped = torch.minimum(x.clamp(min=0.0), s)
        return s * (clipped >= s / 2).to(x.dtype) + (clipped - clipped.detach())

    def extra_repr(self) -> str:
        scale = "float input" if self.input_scale is None else f"input_scale={self.input_scale.item():.4g}"
        return f"{super().extra_repr()}, binary, {scale}, track_input_scale={self.track_input_scale}"


class BinaryConv2d(BinaryLayer, nn.Conv2d):
    @classmethod
    def from_float(cls, conv: nn.Conv2d, input_scale: torch.Tensor | None, track_input_scale: bool):
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                    device=conv.weight.device, dtype=conv.weight.dtype)
        layer.load_state_dict(conv.state_dict())
        layer._init_binary(input_scale, track_input_scale)
        return layer.train(conv.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantize_input(x), self.binary_weight(), self.bias)


class BinaryLinear(BinaryLayer, nn.Linear):
    @classmethod
    def from_float(cls, linear: nn.Linear, input_scale: torch.Tensor | None, track_input_scale: bool):
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        layer.load_state_dict(linear.state_dict())
        layer._init_binary(input_scale, track_input_scale)
        return layer.train(linear.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantize_input(x), self.binary_weight(), self.bias)


def binary_layers(model: nn.Module) -> dict[str, BinaryLayer]:
    """{name: layer} of the binary layers of ``model``, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, BinaryLayer)}


def _run_forward(model: nn.Module, batches: list[torch.Tensor], hooks: dict) -> None:
    """Forward ``batches`` in eval mode without gradients, with forward pre-hooks {module: hook}."""
    handles = [module.register_forward_pre_hook(hook) for module, hook in hooks.items()]
    training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:
                model(batch.to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)


def run_order(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Names of the Conv2d/Linear layers in the order a forward of ``model`` runs them."""
    order: list[str] = []
    layers = {m: name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    _run_forward(model, [example_input], {m: lambda module, args: order.append(layers[module]) for m in layers})
    if len(order) < 3:
        raise ValueError("INT1 keeps the first and last layers in float: the model needs at least 3 Conv2d/Linear")
    return order


def calibrate_input_scales(model: nn.Module, calibration_batches: list[torch.Tensor]) -> None:
    """Set the activation level s of every binary layer of ``model`` that quantizes its input: the mean
    over batches of ``two_level_scale`` of the layer's input. A forward pre-hook sets s just before the
    layer runs, so each layer is calibrated on the inputs produced by the already calibrated binary
    layers before it. Forward only, in eval mode (no QAT tracking)."""
    estimates: dict[nn.Module, list[torch.Tensor]] = {}

    def calibrate(layer, args):
        estimates.setdefault(layer, []).append(two_level_scale(args[0]))
        layer.input_scale = torch.stack(estimates[layer]).mean()

    layers = [m for m in binary_layers(model).values() if m.input_scale is not None]
    _run_forward(model, calibration_batches, {layer: calibrate for layer in layers})
    if any(layer not in estimates for layer in layers):
        raise ValueError("some binary layers are not run by the model's forward and cannot be calibrated")


def convert_to_binary(model: nn.Module, input_scales: dict, track_input_scale: bool) -> nn.Module:
    """Replace, in place, each Conv2d/Linear named in ``input_scales`` by its binary twin with that
    activation level. Returns ``model``."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    unknown = set(input_scales) - set(layers)
    if unknown or any(isinstance(m, BinaryLayer) for m in layers.values()):
        raise ValueError("quant state does not match the Conv2d/Linear layers of this (float) model: "
                         f"model has {sorted(layers)}, state names {sorted(unknown)}")
    for name in input_scales:
        layer = layers[name]
        binary_class = BinaryConv2d if isinstance(layer, nn.Conv2d) else BinaryLinear
        _replace(model, name, binary_class.from_float(layer, input_scales[name], track_input_scale))
    return model


def unbinarize(model: nn.Module) -> nn.Module:
    """``model`` with each binary layer replaced, in place, by a plain float layer with its float weights."""
    for name, layer in binary_layers(model).items():
        plain_class = nn.Conv2d if isinstance(layer, nn.Conv2d) else nn.Linear
        plain = copy.deepcopy(layer)
        plain.__class__ = plain_class  # same parameters, the plain forward
        del plain.input_scale, plain.track_input_scale, plain.kept_weight
        _replace(model, name, plain)
    return model


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, module)


def binarize(model: nn.Module, calibration_batches: list[torch.Tensor], track_input_scale: bool) -> nn.Module:
    """A binary (INT1) deep copy of the float ``model`` calibrated on ``calibration_batches``, in eval
    mode; ``track_input_scale`` makes it a QAT model (levels keep tracking in train mode). The first and
    last layers the forward runs stay in full precision (XNOR-Net)."""
    work = copy.deepcopy(model).eval()
    inner = run_order(work, calibration_batches[0][:1])[1:-1]
    placeholder = torch.ones((), device=next(work.parameters()).device)  # replaced by calibration
    convert_to_binary(work, {name: placeholder for name in inner}, track_input_scale)
    calibrate_input_scales(work, calibration_batches)
    return work.eval()
