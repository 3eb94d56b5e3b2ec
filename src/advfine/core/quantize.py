"""Quantization: post-training fake quantization (PTQ), quantization-aware training (QAT) and the real
integer model exported from either, all one scheme (torch.ao's FX graph mode, the scheme torch deploys):

* **BatchNorm folded first**: every BatchNorm2d is folded into the conv before it (eval statistics), so
  a quantized model has no BatchNorm. Fine-tuning then never runs BatchNorm in train mode on quantized
  activations (with BatchNorm unfolded and an unclipped estimator, fine-tuning a quantized ResNet diverges).
* **Weights**: symmetric, one scale per output channel, integers in [-(2^(b-1)-1), 2^(b-1)-1]
  (INT8: [-127, 127]); the scale is always the current weights' (recomputed whenever they change).
* **Activations**: affine, one scale per tensor, from min/max observed on calibration batches (PTQ:
  then fixed, also during fine-tuning) or tracked as a moving average while training (QAT, decay 0.99,
  torch.ao's default); never moved in eval mode, so attacks cannot move them. Observed where the
  deployed model quantizes: the first layer's input (the normalized image), each conv/linear output
  after its fused ReLU, residual sums, the logits. INT8 activations use 7-bit steps (as torch.ao's x86
  default ``reduce_range``: without VNNI, uint8 x int8 products of 8 bits saturate int16) and are
  clamped to [0, 255] like the deployed uint8 tensors.
* **Gradients**: torch's fake-quantize kernels pass the gradient straight through inside the range
  and zero it where a value was clamped (a clipped straight-through estimator), in PTQ fine-tuning
  and QAT alike. On the CPU, per-tensor activations use ``FakeQuantizePerTensorCPU`` (bitwise the
  same values and gradient: it rounds ``x * (1.0f / scale)`` as torch's kernels do, not ``x / scale``,
  which rounds some half-steps the other way; torch's CPU kernel is not vectorized); on CUDA torch's
  fused kernel.
* **The deployed model** (``int8_export.export_int8``) is ``convert_fx`` of the fake-quant model: the
  same graph, the same scales and zero points, integer kernels. The tests and the compute table check
  that both agree on at least 99 % of test predictions.

We subclass torch.ao's FakeQuantize to decide *when* it observes with Python flags (its own forward
reads a tensor flag, a device sync per layer per step on a GPU), to clamp INT8 activations to the
deployed range and to use the faster CPU kernel; no ``torch.cuda.empty_cache()`` anywhere (NNI 3.0
called it after every wrapped layer's forward). On a GPU nothing in a fake-quant forward reads a tensor
on the host (a device sync): the observers' min/max and qparams are torch.ao's formulas without its
value checks, and weights pass a floating zero point, for which torch skips its per-call range check
(two ``.item()`` for an int32 one). ``emulate_cuda_path`` runs that code path on the CPU, where
``advfine.core.syncs`` counts its host reads (``benchmarks/sync_count.py``). A fake-quantized weight is
computed once while its weight does not change and takes no gradient (eval, attacks), not at every
forward. INT1 is ``binary.py`` (XNOR-Net): torch's integer kernels stop at INT8 and a 1-bit affine
grid is degenerate.
"""
from __future__ import annotations

import copy
import struct
import warnings
from contextlib import contextmanager

import torch
from torch import fx, nn
from torch.ao.quantization import FakeQuantize, FakeQuantizeBase, QConfig, QConfigMapping
from torch.ao.quantization.observer import MinMaxObserver, MovingAverageMinMaxObserver, PerChannelMinMaxObserver
from torch.ao.quantization.quantize_fx import prepare_qat_fx
from torch.nn.utils.fusion import fuse_conv_bn_eval

from advfine.core import binary
from advfine.core.kept import KeptFromWeight
from advfine.core.models import build_model

SUPPORTED_BITS = (16, 8, 4, 2, 1)  # 1: the binary scheme of binary.py
QUANT_MODES = ("ptq", "qat")
SCHEME = "torch.ao-fx-1"  # checkpoints record the scheme; others are refused with a clear error
INFO_KEY = "advfine_quantization"
QAT_EMA_DECAY = 0.99  # of the tracked activation min/max in QAT (torch.ao's averaging_constant 0.01)


def calibration_batches(x: torch.Tensor, n_batches: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """The calibration data of PTQ (and the starting ranges of QAT): ``n_batches`` fixed random batches of
    ``batch_size`` training images (no labels), drawn with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=g)[: n_batches * batch_size]
    return [x[i] for i in idx.split(batch_size)]


# ------------------------------------------------------------------------------------ fake quantizer

_emulating_cuda = False  # see emulate_cuda_path


@contextmanager
def emulate_cuda_path():
    """Within: the fake quantizers run their CUDA code path on CPU tensors too (torch's kernels with
    tensor qparams instead of ``FakeQuantizePerTensorCPU``'s Python numbers), so that its host reads,
    device syncs on a GPU, can be counted without one (``advfine.core.syncs``). Same values."""
    global _emulating_cuda
    previous, _emulating_cuda = _emulating_cuda, True
    try:
        yield
    finally:
        _emulating_cuda = previous


def _cuda_path(x: torch.Tensor) -> bool:
    return x.is_cuda or _emulating_cuda


def _float32(value: float) -> float:
    """``value`` rounded to the nearest float32 (as a Python float)."""
    return struct.unpack("f", struct.pack("f", value))[0]


def _observe_min_max(observer: MinMaxObserver, x: torch.Tensor) -> None:
    """``observer(x)`` for torch.ao's MinMaxObserver and MovingAverageMinMaxObserver, bitwise, without the
    moving average's host-side test for a first observation (a device sync): a ``where`` instead."""
    x = x.detach().to(observer.min_val.dtype)
    if x.numel() == 0:
        return
    cur_min, cur_max = torch.aminmax(x)
    old_min, old_max = observer.min_val, observer.max_val
    if isinstance(observer, MovingAverageMinMaxObserver):
        c = observer.averaging_constant
        first = torch.isposinf(old_min) & torch.isneginf(old_max)
        new_min = torch.where(first, cur_min, old_min + c * (cur_min - old_min))
        new_max = torch.where(first, cur_max, old_max + c * (cur_max - old_max))
    else:
        new_min, new_max = torch.min(cur_min, old_min), torch.max(cur_max, old_max)
    observer.min_val.copy_(new_min)
    observer.max_val.copy_(new_max)


def _affine_qparams(observer: MinMaxObserver) -> tuple[torch.Tensor, torch.Tensor]:
    """``observer.calculate_qparams()`` of a per-tensor affine observer, bitwise, without its host-side
    checks (device syncs): nothing observed yet gives scale 1 and zero point 0 as torch.ao's does (a
    ``where``); its min <= max assertion holds by construction (minima and maxima of the same batches)."""
    qmin, qmax = observer.quant_min, observer.quant_max
    min_val, max_val = observer.min_val, observer.max_val
    min_neg = torch.min(min_val, torch.zeros_like(min_val))
    max_pos = torch.max(max_val, torch.zeros_like(max_val))
    scale = torch.max((max_pos - min_neg) / float(qmax - qmin), observer.eps)
    zero_point = torch.clamp(qmin - torch.round(min_neg / scale).to(torch.int), qmin, qmax)
    unobserved = torch.isposinf(min_val) & torch.isneginf(max_val)
    return torch.where(unobserved, 1.0, scale), torch.where(unobserved, 0, zero_point)


class FakeQuant(FakeQuantize):
    """torch.ao's FakeQuantize (fused kernel, clipped STE) that observes while ``calibrating`` or, when
    ``track``, in train mode; never in eval mode. ``clamp`` overrides the integer range the values are
    clamped to (INT8 activations: steps of the 7-bit observer, clamp of the deployed uint8)."""

    def __init__(self, *, track: bool, clamp: tuple[int, int] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.track = track
        self.calibrating = False
        self.clamp_min, self.clamp_max = clamp or (self.activation_post_process.quant_min,
                                                   self.activation_post_process.quant_max)

    def observe(self, x: torch.Tensor) -> None:
        observer = self.activation_post_process
        if type(observer) in (MinMaxObserver, MovingAverageMinMaxObserver) \
                and observer.qscheme == torch.per_tensor_affine:
            with torch.no_grad():
                _observe_min_max(observer, x)
                scale, zero_point = _affine_qparams(observer)
        else:  # torch.ao's own (with its syncs): not used by this module's qconfigs
            observer(x.detach())
            scale, zero_point = self.calculate_qparams()
        if self.scale.shape != scale.shape:
            self.scale.resize_(scale.shape)
            self.zero_point.resize_(zero_point.shape)
        self.scale.copy_(scale.to(self.scale.device))
        self.zero_point.copy_(zero_point.to(self.zero_point.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating or (self.training and self.track):
            self.observe(x)
        if self.is_per_channel:
            return torch.fake_quantize_per_channel_affine(x, self.scale, self.zero_point, self.ch_axis,
                                                          self.clamp_min, self.clamp_max)
        if _cuda_path(x):  # tensor qparams: the kernel reads them on the device
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.clamp_min, self.clamp_max)
        # Python numbers: on the CPU .item() costs nothing, and tensor operands made div and clamp 6x slower
        return FakeQuantizePerTensorCPU.apply(x, self.scale.item(), int(self.zero_point.item()),
                                              self.clamp_min, self.clamp_max)


class FakeQuantizePerTensorCPU(torch.autograd.Function):
    """torch.fake_quantize_per_tensor_affine, bitwise (same values, same clipped STE), for the CPU.
    torch's CPU kernel is slow: on a 256x32x28x28 activation it took 73.5 ms where these in-place passes
    take 9.7 ms, about a ReLU's time (benchmarks/fake_quant_speed.py), so on the CPU it cost as much as
    all of CNN8's convolutions. On CUDA the fused kernel is fast and is used.

    Rounding as torch's kernels (CPU and CUDA): ``nearbyint(x * inv_scale)`` with ``inv_scale = 1.0f /
    scale`` in float32; ``x / scale`` differs at some half-steps. Unlike the kernels, NaN stays NaN
    (they map it to the lowest level)."""

    @staticmethod
    def forward(ctx, x, scale: float, zero_point: int, qmin: int, qmax: int):
        scale = _float32(scale)  # the kernels take the scale as a float32
        # 1/scale in double, then rounded to float32: the same as float32 division (53 >= 2 * 24 + 2 bits)
        inv_scale = _float32(1.0 / scale)
        steps = torch.mul(x, inv_scale).round_()  # round half to even, as the kernels' nearbyint
        lo, hi = qmin - zero_point, qmax - zero_point
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward((steps >= lo) & (steps <= hi))
        # + 0.0 turns the -0.0 of values rounded up to 0 into +0.0: the kernels multiply an integer by the scale
        return steps.clamp_(lo, hi).mul_(scale).add_(0.0)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


class WeightFakeQuant(FakeQuant):
    """Per-channel symmetric weights whose range is always the current weights' (in train and eval mode):
    a scale fixed at calibration or one step old would clamp weights that moved, and the deployed model,
    converted from the current weights, would differ (measured: 92 % agreement after one epoch of
    fine-tuning with a one-step-old scale, 100 % with the current one). Computed as torch.ao's symmetric
    observer does, without its checks that sync a GPU per layer.

    The fake-quantized weight is kept while the weight is unchanged and takes no gradient
    (``kept.KeptFromWeight``): eval forwards and attack steps (attacks freeze the parameters) compute it
    once, training forwards at every forward, as the weights change at every step. It is not in the
    state_dict."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.kept = KeptFromWeight()

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.kept.get(w, self.quantize_weight)

    def quantize_weight(self, w: torch.Tensor) -> torch.Tensor:
        """The fake-quantized weight, computed (no reuse)."""
        observer = self.activation_post_process
        with torch.no_grad():
            dims = tuple(d for d in range(w.dim()) if d != self.ch_axis)
            w_min, w_max = w.amin(dim=dims), w.amax(dim=dims)
            observer.min_val.resize_(w_min.shape).copy_(w_min)  # what convert_fx reads
            observer.max_val.resize_(w_max.shape).copy_(w_max)
            max_abs = torch.maximum(-w_min.clamp(max=0), w_max.clamp(min=0))
            steps = (observer.quant_max - observer.quant_min) / 2
            scale = torch.clamp(max_abs / steps, min=torch.finfo(torch.float32).eps)  # the observer's eps
            if self.scale.shape != scale.shape:
                self.scale.resize_(scale.shape)
                self.zero_point.resize_(scale.shape)
                self.zero_point.zero_()
            self.scale.copy_(scale)
        # A floating zero point (always 0 here, as the int32 ``zero_point`` convert_fx and checkpoints
        # keep): torch checks an integer one's range with two .item() (device syncs), and with zero point
        # 0 both compute the same values.
        return torch.fake_quantize_per_channel_affine(w, self.scale, torch.zeros_like(self.scale), self.ch_axis,
                                                      self.clamp_min, self.clamp_max)


def _qconfig(bits: int, mode: str) -> QConfig:
    if bits == 16:  # torch's uint8/int8 dtypes cannot hold 16 bits: qint32 carries them (fake-quant only)
        act_range, act_dtype, w_dtype = (0, 2**16 - 1), torch.qint32, torch.qint32
    else:
        act_range, act_dtype, w_dtype = (0, 2**bits - 1), torch.quint8, torch.qint8
    clamp = None
    if bits == 8:
        act_range, clamp = (0, 127), (0, 255)
    observer = MovingAverageMinMaxObserver.with_args(averaging_constant=1 - QAT_EMA_DECAY) if mode == "qat" \
        else MinMaxObserver
    activation = FakeQuant.with_args(observer=observer, quant_min=act_range[0], quant_max=act_range[1],
                                     dtype=act_dtype, qscheme=torch.per_tensor_affine, track=mode == "qat",
                                     clamp=clamp)
    w_max = 2 ** (bits - 1) - 1
    weight = WeightFakeQuant.with_args(observer=PerChannelMinMaxObserver, quant_min=-w_max, quant_max=w_max,
                                       dtype=w_dtype, qscheme=torch.per_channel_symmetric, ch_axis=0, track=True)
    return QConfig(activation=activation, weight=weight)


def fake_quantizers(model: nn.Module) -> dict[str, FakeQuantizeBase]:
    return {name: m for name, m in model.named_modules() if isinstance(m, FakeQuantizeBase)}


@contextmanager
def _calibrating(model: nn.Module):
    quantizers = [q for q in fake_quantizers(model).values() if isinstance(q, FakeQuant)]
    for q in quantizers:
        q.calibrating = True
    try:
        yield
    finally:
        for q in quantizers:
            q.calibrating = False


# ---------------------------------------------------------------------------------- the fake model

def _batchnorm_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) name pairs: each BatchNorm2d with the Conv2d registered just before it (how our models
    and torchvision's declare conv-bn); checked against the traced graph by ``fold_batchnorm``."""
    pairs, last_conv = [], None
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            last_conv = (name, m)
        elif isinstance(m, nn.BatchNorm2d):
            if last_conv is None or last_conv[1].out_channels != m.num_features:
                raise ValueError(f"BatchNorm {name!r} does not follow a conv with {m.num_features} outputs")
            pairs.append((last_conv[0], name))
            last_conv = None
    return pairs


def fold_batchnorm(model: nn.Module) -> fx.GraphModule:
    """A traced copy of ``model`` (eval mode) with every BatchNorm2d folded into its conv (the conv gains
    a bias) and removed from the graph. Works on any values, so a fresh model folds to the structure
    a checkpoint's state_dict fits."""
    work = copy.deepcopy(model).cpu().eval()
    for conv_name, bn_name in _batchnorm_pairs(work):
        parent, _, leaf = conv_name.rpartition(".")
        fused = fuse_conv_bn_eval(work.get_submodule(conv_name), work.get_submodule(bn_name))
        fused.bias.requires_grad_(True)  # torch makes the new bias of a bias-free conv a frozen parameter
        setattr(work.get_submodule(parent) if parent else work, leaf, fused)
    graph = fx.symbolic_trace(work)
    bns = {bn for _, bn in _batchnorm_pairs(work)}
    for node in list(graph.graph.nodes):
        if node.op == "call_module" and node.target in bns:
            conv = node.args[0]
            if not (conv.op == "call_module" and isinstance(graph.get_submodule(conv.target), nn.Conv2d)):
                raise ValueError(f"BatchNorm {node.target!r} is not applied to a conv's output")
            node.replace_all_uses_with(conv)
            graph.graph.erase_node(node)
    graph.graph.lint()
    graph.delete_all_unused_submodules()
    graph.recompile()
    return graph.eval()


def first_layer(model: nn.Module) -> str:
    """The name of the first Conv2d/Linear (registration order: the layer that sees the image)."""
    return next(name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def _prepare(model: nn.Module, bits: int, mode: str, quantize_first_input: bool,
             example: torch.Tensor) -> fx.GraphModule:
    """The fake-quant structure of ``model`` (values uncalibrated), in eval mode; ``example``: one input."""
    folded = fold_batchnorm(model)
    mapping = QConfigMapping().set_global(_qconfig(bits, mode))
    if not quantize_first_input:
        # the deployed model cannot quantize a layer's weights without its input: the first layer runs
        # in float entirely (the normalized image is never rounded: no bit-depth reduction)
        mapping.set_module_name(first_layer(model), None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FX graph mode's deprecation notice (torchao's pt2e is not a dependency)
        prepared = prepare_qat_fx(folded.train(), mapping, (example.cpu(),))
    return prepared.eval()


def _check(bits, mode: str = "ptq") -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}")
    if mode not in QUANT_MODES:
        raise ValueError(f"quant mode must be one of {QUANT_MODES}, got {mode!r}")


def _require_plain(model: nn.Module, what: str) -> None:
    if is_quantized(model):
        raise ValueError(f"{what} needs a plain float model, got one already quantized")
    if not isinstance(model, nn.Module) or not any(True for _ in model.parameters()):
        raise ValueError(f"{what} needs a torch model with parameters")


def _quantize(model, bits, calibration_batches, quantize_first_input, mode) -> nn.Module:
    _check(bits, mode)
    if not calibration_batches or not all(torch.is_tensor(b) for b in calibration_batches):
        raise ValueError("calibration_batches must be a non-empty list of input tensors")
    _require_plain(model, f"quantize ({mode})")
    if bits == 1:
        return binary.binarize(model, calibration_batches, track_input_scale=mode == "qat")
    device = next(model.parameters()).device
    prepared = _prepare(model, bits, mode, quantize_first_input, calibration_batches[0][:1]).to(device)
    with torch.no_grad(), _calibrating(prepared):
        for batch in calibration_batches:
            prepared(batch.to(device))
    prepared.meta[INFO_KEY] = {"scheme": SCHEME, "mode": mode, "bits": bits,
                               "quantize_first_input": bool(quantize_first_input)}
    return prepared


def quantize_ptq(model: nn.Module, bits: int, calibration_batches: list[torch.Tensor],
                 quantize_first_input: bool = True) -> nn.Module:
    """Post-training fake quantization of a deep copy of ``model`` at ``bits`` in SUPPORTED_BITS,
    calibrated by forward passes over ``calibration_batches``; activation ranges then stay fixed
    (also when fine-tuned). Returned in eval mode. ``quantize_first_input=False`` keeps the first layer
    in float (its input, the image, is then never rounded)."""
    return _quantize(model, bits, calibration_batches, quantize_first_input, "ptq")


def prepare_qat(model: nn.Module, bits: int, calibration_batches: list[torch.Tensor],
                quantize_first_input: bool = True) -> nn.Module:
    """A fake-quantized deep copy of ``model`` for quantization-aware training (Jacob et al. 2018): as
    ``quantize_ptq``, but activation ranges keep tracking (moving average of min/max) in train mode.
    ``calibration_batches`` give the starting ranges, so it can be attacked before its first step."""
    return _quantize(model, bits, calibration_batches, quantize_first_input, "qat")


def quant_info(model: nn.Module) -> dict | None:
    """{"scheme", "mode", "bits", "quantize_first_input"} of a fake-quant model of this module (kept in the
    GraphModule's ``meta``, which deepcopy preserves), else None."""
    return getattr(model, "meta", {}).get(INFO_KEY) if isinstance(model, fx.GraphModule) else None


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` is fake-quantized (this module's scheme or binary layers)."""
    return any(isinstance(m, (FakeQuantizeBase, binary.BinaryLayer)) for m in model.modules())


# ---------------------------------------------------------------------------- quantized checkpoints

def quant_state(qmodel: nn.Module) -> dict:
    """What, besides the state_dict, rebuilds ``qmodel`` (plain types only)::

        {"scheme": SCHEME, "mode": "ptq" | "qat", "bits": 16 | 8 | 4 | 2, "quantize_first_input": bool}
        {"mode": "ptq" | "qat", "bits": 1, "calibration": {layer: {"input_scale": tensor}}}   # binary
    """
    layers = binary.binary_layers(qmodel)
    if layers:
        tracking = {layer.track_input_scale for layer in layers.values()}
        if len(tracking) != 1:
            raise ValueError("binary layers mix PTQ and QAT")
        calibration = {name: {"input_scale": None if layer.input_scale is None
                              else layer.input_scale.detach().cpu().clone()} for name, layer in layers.items()}
        return {"mode": "qat" if tracking.pop() else "ptq", "bits": 1, "calibration": calibration}
    info = quant_info(qmodel)
    if info is None:
        raise ValueError("quant_state needs a model returned by quantize_ptq, prepare_qat or restore_quantized")
    return dict(info)


def restore_quantized(arch: dict, state_dict: dict, quant: dict) -> nn.Module:
    """Rebuild a quantized model from its ``state_dict()`` and ``quant_state``; outputs equal those of
    the saved model, and a QAT model keeps tracking its ranges in train mode."""
    bits, mode = quant.get("bits"), quant.get("mode")
    _check(bits, mode)
    model = build_model(arch)
    if bits == 1:
        model.load_state_dict(state_dict)
        scales = {layer: entry["input_scale"] for layer, entry in quant["calibration"].items()}
        return binary.convert_to_binary(model, scales, track_input_scale=mode == "qat").eval()
    if quant.get("scheme") != SCHEME:
        raise ValueError(f"this checkpoint's quantization scheme is {quant.get('scheme', 'none recorded')!r}, "
                         f"not {SCHEME!r}: re-run its compress/qat job (delete the file) to rebuild it")
    example = torch.zeros(1, arch["in_channels"], arch["input_size"], arch["input_size"])
    prepared = _prepare(model, bits, mode, quant["quantize_first_input"], example)
    prepared.load_state_dict(state_dict)
    prepared.meta[INFO_KEY] = {"scheme": SCHEME, "mode": mode, "bits": bits,
                               "quantize_first_input": bool(quant["quantize_first_input"])}
    return prepared.eval()


def float_twin(qmodel: nn.Module) -> nn.Module:
    """The same network and weights without rounding (fake quantization off; binary layers back to
    their float weights): the source model of transfer attacks."""
    twin = copy.deepcopy(qmodel).eval()
    if binary.binary_layers(twin):
        return binary.unbinarize(twin)
    for name, q in list(twin.named_modules(remove_duplicate=False)):
        if not isinstance(q, FakeQuantizeBase):
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(twin.get_submodule(parent) if parent else twin, leaf, nn.Identity())
    return twin
