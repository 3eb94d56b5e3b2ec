"""Compression with NNI 3.0: L1-norm filter pruning (physically removed by ModelSpeedup), post-training
fake quantization (PtqQuantizer), quantization-aware training (QATQuantizer), a real 1-bit scheme
(``binary.py``: NNI's int1 is degenerate), and checkpointing of quantized models.

Notes on NNI's fake-quant models (read from NNI 3.0's source and checked in tests/test_compress.py):

* ``PtqQuantizer`` wraps each Conv2d/Linear in a ``ModuleWrapper`` that becomes the child module
  ``<layer>._nni_wrapper``; the float weight moves to the parameter ``<layer>._nni_wrapper.weight`` and
  ``<layer>.weight`` becomes a buffer that each forward overwrites with the fake-quantized weight.
  The wrappers live in the model, so the quantizer object does not need to stay alive.
* Scales and zero points are computed ONCE, at the end of calibration (``update_scale_zp`` in
  ``_fuse_postprocess``), and ``ClampRound`` then reads the stored ``<target>_scale`` buffers. They are
  NOT recomputed when the weights change: after fine-tuning, weights are still quantized on the grid
  fixed at calibration (and clamped to its range). The quantizer's tracking hook keeps updating the
  ``tracked_min/max`` buffers on every later forward (training, attacks) but nothing reads them again.
  We remove that hook after calibration (it only costs time and ties the model to the quantizer object);
  ``quant_state`` saves scale, zero point AND tracked min/max, so a restored model has exactly the
  state of the saved one whatever NNI would do with it.
* ``ClampRound.backward`` is the identity (straight-through estimator), for weights and activations, so
  fine-tuning and input gradients (PGD) work; gradients are not zeroed for clamped values.
* QAT (``prepare_qat``) uses NNI's ``QATQuantizer`` without its evaluator: with ``quant_start_step=0`` it
  fake-quantizes from the start, and its two tracking hooks (EMA of min/max with decay 0.99, then scale
  and zero point from them) run on every forward of a wrapper in train mode and on none in eval mode.
  So our own training loop drives it: ranges adapt while training and are frozen in eval (attacks,
  evaluation). Its hooks are bound methods of the quantizer, which thus lives as long as the model
  (copy.deepcopy copies it along). Its fake-quant function zeroes the gradient of clamped values
  (clipped STE), but writes the zeros into autograd's incoming gradient in place; we register the
  same function without that in-place write (``_QATClampRound``).
"""
from __future__ import annotations

import copy
import logging

import nni
import torch
from nni.compression.base.apply_method import QATClampRound, quant_apply_methods
from nni.compression.base.target_space import TargetType
from nni.compression.base.wrapper import ModuleWrapper
from nni.compression.pruning import L1NormPruner
from nni.compression.quantization import PtqQuantizer, QATQuantizer
from nni.compression.speedup import ModelSpeedup
from nni.compression.utils import TorchEvaluator, auto_set_denpendency_group_ids  # (sic)
from torch import nn

from . import binary
from .cost import NNI_WRAPPER as _WRAPPER
from .models import arch_of, build_model
from .nni_compat import apply_nni_torch_fixes

SUPPORTED_BITS = (16, 8, 4, 2, 1)  # 1: the binary scheme of binary.py, the others NNI's intN
QUANT_MODES = ("ptq", "qat")


def calibration_batches(x: torch.Tensor, settings: dict, seed: int) -> list[torch.Tensor]:
    """The calibration data of PTQ (and the starting ranges of QAT): ``settings['calibration_batches']``
    fixed random batches of ``settings['calibration_batch_size']`` training images (no labels), drawn
    with ``seed``. ``settings`` is the config's ``compress`` section."""
    n_batches, batch_size = settings["calibration_batches"], settings["calibration_batch_size"]
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=g)[: n_batches * batch_size]
    return [x[i] for i in idx.split(batch_size)]


# ----------------------------------------------------------------------------------------- pruning

def prune_filters_l1(model: nn.Module, arch: dict, sparsity: float,
                     example_input: torch.Tensor) -> tuple[nn.Module, dict]:
    """Remove the fraction ``sparsity`` of filters with the smallest L1 norm from every Conv2d (NNI prunes
    ``int(out_channels * sparsity)`` filters per layer) and physically shrink the model (BatchNorm layers
    lose the channels of their conv). Convs whose outputs are added together (ResNet residuals) form one
    dependency group that loses the same filters, ranked by their mean L1 norm. The input model is left
    untouched; returns a fresh ``build_model(new_arch)`` in eval mode and ``new_arch``."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparsity must be a number with 0 < sparsity < 1, got {sparsity!r}")
    _require_plain(model, "prune_filters_l1")
    apply_nni_torch_fixes()
    work = copy.deepcopy(model).eval()
    device = next(work.parameters()).device
    example_input = example_input.detach().to(device)
    config = [{"op_types": ["Conv2d"], "sparse_ratio": float(sparsity)}]
    # Without groups, each residual conv gets its own mask and ModelSpeedup keeps the union of the masks
    # of added channels, so a ResNet stays far wider than asked (FACTS.md). NNI finds the groups by tracing;
    # for a plain chain like CNN8 every conv is its own group and the masks are the same as without.
    config = auto_set_denpendency_group_ids(work, config, example_input)
    pruner = L1NormPruner(work, config)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    nni_logger = logging.getLogger("nni")
    level = nni_logger.level
    nni_logger.setLevel(logging.WARNING)  # ModelSpeedup logs every replaced module at INFO
    try:
        ModelSpeedup(work, example_input, masks, logger=nni_logger).speedup_model()
    finally:
        nni_logger.setLevel(level)
    new_arch = arch_of(work, arch)
    pruned = build_model(new_arch).to(device)
    pruned.load_state_dict(work.state_dict())
    return pruned.eval(), new_arch


# ------------------------------------------------------------------------------------ quantization

def _check_bits(bits) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}")


def first_layer(model: nn.Module) -> str:
    """The name of the first Conv2d/Linear (registration order: the layer that sees the image)."""
    return next(name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def _quant_config(bits: int, model: nn.Module, quantize_first_input: bool = True) -> list[dict]:
    """Weights symmetric, inputs/outputs of every Conv2d and Linear affine, all intN, per tensor.
    Without ``quantize_first_input`` the first layer's input (the normalized image) stays in float:
    quantizing it at 4 bits or fewer rounds the image itself (bit-depth reduction), which can hide the
    model's gradient from attacks and changes what eps means (see the evaluation audit)."""
    schemes = {"weight": "symmetric", "_input_": "affine", "_output_": "affine"}

    def entry(targets, **select):
        return {**select, "target_names": list(targets),
                "quant_dtype": f"int{bits}",  # NNI requires the top-level key as well as the per-target one
                "target_settings": {t: {"quant_dtype": f"int{bits}", "quant_scheme": schemes[t]} for t in targets}}

    if quantize_first_input:
        return [entry(schemes, op_types=["Conv2d", "Linear"])]
    first = first_layer(model)
    return [entry(schemes, op_types=["Conv2d", "Linear"], exclude_op_names=[first]),
            entry(("weight", "_output_"), op_names=[first])]


def _check_calibration(calibration_batches) -> None:
    if not calibration_batches or not all(torch.is_tensor(b) for b in calibration_batches):
        raise ValueError("calibration_batches must be a non-empty list of input tensors")


def _require_plain(model: nn.Module, what: str) -> None:
    if _wrappers(model) or binary.binary_layers(model):
        raise ValueError(f"{what} needs a plain float model, got one already quantized")


def _wrappers(model: nn.Module) -> dict[str, nn.Module]:
    """{layer name: its NNI ModuleWrapper}."""
    return {name: m._nni_wrapper for name, m in model.named_modules()
            if isinstance(getattr(m, _WRAPPER, None), ModuleWrapper)}


def _detach_fake_weights(module: nn.Module, inputs, output) -> None:
    # The wrapper stores the fake-quantized weight (a non-leaf tensor with autograd history) as the
    # layer's ``weight`` buffer. Autograd already holds what backward needs; detaching the buffer
    # afterwards lets copy.deepcopy work (it refuses non-leaf tensors) and frees the graph sooner.
    for name, space in module._nni_wrapper.quantization_target_spaces.items():
        if space.type is TargetType.PARAMETER:
            setattr(module, name, getattr(module, name).detach())


def _finish_quantized(model: nn.Module) -> nn.Module:
    """PTQ: drop the quantizer's min/max tracking hook (see module docstring). Both: add the detach hook."""
    for name, wrapper in _wrappers(model).items():
        if not _is_qat(wrapper):
            wrapper._track_funcs = [f for f in wrapper._track_funcs
                                    if getattr(f, "__name__", "") != "track_min_max_val"]
        model.get_submodule(name).register_forward_hook(_detach_fake_weights)
    return model.eval()


class _QATClampRound(QATClampRound):
    """NNI's QATClampRound (fake-quantize; zero gradient where the value was clamped: clipped STE) with
    an out-of-place backward. NNI's ``grad_output[mask] = 0.`` writes into the incoming gradient, which
    autograd may share or expand: after ``out.sum().backward()`` (one expanded tensor of ones) a single
    clamped output zeroed every gradient of the model (measured)."""

    @staticmethod
    def backward(ctx, grad_output):
        (transformed,) = ctx.saved_tensors
        space = ctx.target_space
        clamped = (transformed < space.qmin) | (transformed > space.qmax)
        return grad_output.masked_fill(clamped, 0.0), None


QAT_APPLY_METHOD = "advfine_qat_clamp_round"
quant_apply_methods.setdefault(QAT_APPLY_METHOD, _QATClampRound.apply)  # wrappers look methods up by name


def _is_qat(wrapper: ModuleWrapper) -> bool:
    return any(space.apply_method == QAT_APPLY_METHOD for space in wrapper.quantization_target_spaces.values())


def _qat_quantizer(model: nn.Module, bits: int, quantize_first_input: bool = True) -> QATQuantizer:
    """Wrap ``model`` in place with NNI's QATQuantizer, fake-quantizing from the first forward (no
    evaluator: our training loop drives it, see module docstring), with our out-of-place fake-quant."""
    quantizer = QATQuantizer(model, _quant_config(bits, model, quantize_first_input), evaluator=None,
                             quant_start_step=0)
    for wrapper in _wrappers(model).values():
        for space in wrapper.quantization_target_spaces.values():
            space.apply_method = QAT_APPLY_METHOD
    return quantizer


def quantize_ptq(model: nn.Module, bits: int, calibration_batches: list[torch.Tensor],
                 quantize_first_input: bool = True) -> nn.Module:
    """Post-training fake quantization at ``bits`` in {16, 8, 4, 2} with NNI's PtqQuantizer, calibrated by
    a forward-only pass over ``calibration_batches``; ``bits=1`` is the binary scheme of ``binary.py``
    (sign x scale weights, two-level activations; its first input is never quantized). Returns a
    quantized deep copy in eval mode. ``quantize_first_input``: see ``_quant_config``."""
    _check_bits(bits)
    _check_calibration(calibration_batches)
    _require_plain(model, "quantize_ptq")
    if bits == 1:
        return binary.binarize(model, calibration_batches, track_input_scale=False)
    work = copy.deepcopy(model).eval()
    device = next(work.parameters()).device

    def calibrate(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None):
        model.eval()
        with torch.no_grad():
            for batch in calibration_batches:
                model(batch.to(device))

    evaluator = TorchEvaluator(
        calibrate, nni.trace(torch.optim.SGD)(work.parameters(), lr=0.0),  # NNI wants a traced optimizer
        training_step=lambda batch, model: None, evaluating_func=lambda model: None)
    PtqQuantizer(work, _quant_config(bits, work, quantize_first_input), evaluator).compress(
        max_steps=len(calibration_batches), max_epochs=None)
    return _finish_quantized(work)


def prepare_qat(model: nn.Module, bits: int, calibration_batches: list[torch.Tensor],
                quantize_first_input: bool = True) -> nn.Module:
    """A fake-quantized deep copy of ``model`` for quantization-aware training (Jacob et al. 2018) at
    ``bits`` in SUPPORTED_BITS, returned in eval mode; ``model`` is left untouched.

    Weights symmetric, activations (inputs/outputs of Conv2d/Linear) affine, per tensor, as in PTQ.
    In train mode every forward moves the ranges (EMA of min/max, NNI's QATQuantizer) before quantizing;
    in eval mode they are frozen. ``calibration_batches`` initialize the ranges (forward passes without
    gradients), so the model can be attacked (eval mode) before its first training step.
    Train it with ``train_model`` (gradients straight through, zero where clamped); save it with
    ``float_state_dict`` + ``quant_state``. ``bits=1``: the binary scheme of ``binary.py``, whose
    activation levels are tracked the same way (weight scales follow the weights anyway)."""
    _check_bits(bits)
    _check_calibration(calibration_batches)
    _require_plain(model, "prepare_qat")
    if bits == 1:
        return binary.binarize(model, calibration_batches, track_input_scale=True)
    work = copy.deepcopy(model).eval()
    device = next(work.parameters()).device
    _qat_quantizer(work, bits, quantize_first_input)
    # NNI tracks ranges only when a wrapper is in train mode: flag just the wrappers (not recursively),
    # so the rest of the model (e.g. BatchNorm statistics) stays as in eval mode during calibration
    for wrapper in _wrappers(work).values():
        wrapper.training = True
    with torch.no_grad():
        for batch in calibration_batches:
            work(batch.to(device))
    return _finish_quantized(work)


# ---------------------------------------------------------------------------- quantized checkpoints

def float_state_dict(qmodel: nn.Module) -> dict:
    """The float weights of a quantized model, keyed like ``build_model(arch).state_dict()``."""
    state = {k: v.detach().clone() for k, v in qmodel.state_dict().items() if f"{_WRAPPER}." not in k}
    for name, param in qmodel.named_parameters():
        if f"{_WRAPPER}." in name:  # the real weight; '<layer>.weight' is only last forward's fake-quant copy
            state[name.replace(f"{_WRAPPER}.", "")] = param.detach().clone()
    return state


def quant_state(qmodel: nn.Module) -> dict:
    """Everything besides the float weights needed to rebuild ``qmodel`` (plain types and tensors only,
    loadable with ``torch.load(weights_only=True)``)::

        {"mode": "ptq" | "qat",   # qat: ranges keep tracking in train mode (also after restoring)
         "bits": int,             # 16, 8, 4, 2: NNI fake-quant; 1: the binary scheme of binary.py
         "calibration": {layer: {target: {scale, zero_point, tracked_min, tracked_max,
                                          quant_dtype, quant_scheme, quant_bits}}}   # NNI (bits >= 2)
                     or {layer: {"input_scale": 0-d tensor or None}}                 # binary (bits 1)
        }

    Checkpoints written before QAT existed have no "mode": ``restore_quantized`` reads them as PTQ."""
    layers = binary.binary_layers(qmodel)
    if layers:
        calibration = {name: {"input_scale": None if layer.input_scale is None
                              else layer.input_scale.detach().cpu().clone()} for name, layer in layers.items()}
        tracking = {layer.track_input_scale for layer in layers.values()}
        if len(tracking) != 1:
            raise ValueError("binary layers mix PTQ and QAT")
        return {"mode": "qat" if tracking.pop() else "ptq", "bits": 1, "calibration": calibration}
    calibration = {}
    for layer, wrapper in _wrappers(qmodel).items():
        calibration[layer] = {}
        for target, space in wrapper.quantization_target_spaces.items():
            entry = {"quant_dtype": space.quant_dtype, "quant_scheme": space.quant_scheme,
                     "quant_bits": int(space.quant_bits)}
            for key in ("scale", "zero_point", "tracked_min", "tracked_max"):
                value = getattr(space, key)
                entry[key] = None if value is None else value.detach().cpu().clone()
            calibration[layer][target] = entry
    if not calibration:
        raise ValueError("quant_state needs a model returned by quantize_ptq, prepare_qat or restore_quantized")
    bits = {e["quant_bits"] for layer in calibration.values() for e in layer.values()}
    if len(bits) != 1:
        raise ValueError(f"mixed bit widths are not supported, found {sorted(bits)}")
    modes = {_is_qat(wrapper) for wrapper in _wrappers(qmodel).values()}
    if len(modes) != 1:
        raise ValueError("quantized layers mix PTQ and QAT")
    return {"mode": "qat" if modes.pop() else "ptq", "bits": bits.pop(), "calibration": calibration}


def restore_quantized(arch: dict, state_dict: dict, quant: dict) -> nn.Module:
    """Rebuild a quantized model from ``float_state_dict`` and ``quant_state`` output (no calibration data
    needed). Outputs equal those of the saved model; a QAT model keeps tracking its ranges in train
    mode, from the saved ones. A ``quant`` without "mode" (older checkpoints) is PTQ."""
    bits = int(quant["bits"])
    _check_bits(bits)
    mode = quant.get("mode", "ptq")
    if mode not in QUANT_MODES:
        raise ValueError(f"quant mode must be one of {QUANT_MODES}, got {mode!r}")
    model = build_model(arch)
    model.load_state_dict(state_dict)  # before wrapping: the wrapper copies the weights it finds
    calibration = quant["calibration"]
    if bits == 1:
        if not all(isinstance(v, dict) and set(v) == {"input_scale"} for v in calibration.values()):
            raise ValueError("quant state does not match the binary (INT1) scheme: expected "
                             "{layer: {'input_scale': ...}} entries")
        scales = {layer: entry["input_scale"] for layer, entry in calibration.items()}
        return binary.convert_to_binary(model, scales, track_input_scale=mode == "qat").eval()
    # the calibration says whether the first layer's input was quantized (older checkpoints: it was)
    first_input = any(t.startswith("_input_") for t in calibration.get(first_layer(model), {"_input_0": None}))
    if mode == "qat":
        quantizer = _qat_quantizer(model, bits, first_input)
    else:
        quantizer = PtqQuantizer(model, _quant_config(bits, model, first_input), evaluator=None)
        quantizer.is_compressed = True  # a fresh PtqQuantizer would "bypass" (return floats) until calibrated
        quantizer.register_ptq_apply_method()
    quantizer.update_calibration_config(calibration)  # sets scale/zero_point, asserts dtype/scheme/bits
    wrappers = _wrappers(model)
    if set(wrappers) != set(calibration) or any(
            set(wrappers[k].quantization_target_spaces) != set(v) for k, v in calibration.items()):
        raise ValueError("quant state does not match the quantized layers/targets of this arch")
    for layer, targets in calibration.items():
        for target, entry in targets.items():
            space = wrappers[layer].quantization_target_spaces[target]
            space.tracked_min, space.tracked_max = entry["tracked_min"], entry["tracked_max"]
    return _finish_quantized(model)
