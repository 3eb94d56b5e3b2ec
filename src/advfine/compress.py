"""Compression with NNI 3.0: L1-norm filter pruning (physically removed by ModelSpeedup), post-training
fake quantization (PtqQuantizer), and checkpointing of quantized models.

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
"""
from __future__ import annotations

import copy
import logging

import nni
import torch
from nni.compression.base.target_space import TargetType
from nni.compression.base.wrapper import ModuleWrapper
from nni.compression.pruning import L1NormPruner
from nni.compression.quantization import PtqQuantizer
from nni.compression.speedup import ModelSpeedup
from nni.compression.utils import TorchEvaluator
from torch import nn

from .cost import NNI_WRAPPER as _WRAPPER
from .cost import model_cost, weight_storage_bytes  # noqa: F401  (re-exported)
from .models import arch_of, build_model
from .nni_compat import apply_nni_torch_fixes

SUPPORTED_BITS = (16, 8, 4, 2)


# ----------------------------------------------------------------------------------------- pruning

def prune_filters_l1(model: nn.Module, arch: dict, sparsity: float,
                     example_input: torch.Tensor) -> tuple[nn.Module, dict]:
    """Remove the fraction ``sparsity`` of filters with the smallest L1 norm from every Conv2d (NNI prunes
    ``int(out_channels * sparsity)`` filters per layer) and physically shrink the model. The input model
    is left untouched; returns a fresh ``build_model(new_arch)`` in eval mode and ``new_arch``."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparsity must be a number with 0 < sparsity < 1, got {sparsity!r}")
    _require_plain(model, "prune_filters_l1")
    apply_nni_torch_fixes()
    work = copy.deepcopy(model).eval()
    device = next(work.parameters()).device
    pruner = L1NormPruner(work, [{"op_types": ["Conv2d"], "sparse_ratio": float(sparsity)}])
    _, masks = pruner.compress()
    pruner.unwrap_model()
    nni_logger = logging.getLogger("nni")
    level = nni_logger.level
    nni_logger.setLevel(logging.WARNING)  # ModelSpeedup logs every replaced module at INFO
    try:
        ModelSpeedup(work, example_input.detach().to(device), masks, logger=nni_logger).speedup_model()
    finally:
        nni_logger.setLevel(level)
    new_arch = arch_of(work, arch)
    pruned = build_model(new_arch).to(device)
    pruned.load_state_dict(work.state_dict())
    return pruned.eval(), new_arch


# ------------------------------------------------------------------------------------ quantization

def _check_bits(bits) -> None:
    if bits == 1 and not isinstance(bits, bool):
        raise ValueError(
            "bits=1 (INT1) is not supported yet: NNI's intN range is [-(2^(N-1))+1, 2^(N-1)-1], so int1 is "
            "degenerate (range [0, 0], infinite scale, every value quantizes to 0). A real 1-bit scheme "
            "(e.g. sign x scale weights) would be needed.")
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}")


def _quant_config(bits: int) -> list[dict]:
    """Weights symmetric, inputs/outputs of every Conv2d and Linear affine, all intN, per tensor."""
    schemes = {"weight": "symmetric", "_input_": "affine", "_output_": "affine"}
    return [{
        "op_types": ["Conv2d", "Linear"],
        "target_names": list(schemes),
        "quant_dtype": f"int{bits}",  # NNI requires the top-level key as well as the per-target one
        "target_settings": {t: {"quant_dtype": f"int{bits}", "quant_scheme": s} for t, s in schemes.items()},
    }]


def _require_plain(model: nn.Module, what: str) -> None:
    if _wrappers(model):
        raise ValueError(f"{what} needs a plain float model, got one already wrapped by NNI")


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
    """Drop the quantizer's min/max tracking hook (see module docstring) and add the detach hook."""
    for name, wrapper in _wrappers(model).items():
        wrapper._track_funcs = [f for f in wrapper._track_funcs if getattr(f, "__name__", "") != "track_min_max_val"]
        model.get_submodule(name).register_forward_hook(_detach_fake_weights)
    return model.eval()


def quantize_ptq(model: nn.Module, bits: int, calibration_batches: list[torch.Tensor]) -> nn.Module:
    """Post-training fake quantization at ``bits`` in {16, 8, 4, 2} with NNI's PtqQuantizer, calibrated by
    a forward-only pass over ``calibration_batches``. Returns a quantized deep copy in eval mode."""
    _check_bits(bits)
    if not calibration_batches or not all(torch.is_tensor(b) for b in calibration_batches):
        raise ValueError("calibration_batches must be a non-empty list of input tensors")
    _require_plain(model, "quantize_ptq")
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
    PtqQuantizer(work, _quant_config(bits), evaluator).compress(max_steps=len(calibration_batches), max_epochs=None)
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
    loadable with ``torch.load(weights_only=True)``): bit width and, per layer and target, NNI's
    calibration (scale, zero_point, tracked_min/max, dtype, scheme)."""
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
        raise ValueError("quant_state needs a model returned by quantize_ptq or restore_quantized")
    bits = {e["quant_bits"] for layer in calibration.values() for e in layer.values()}
    if len(bits) != 1:
        raise ValueError(f"mixed bit widths are not supported, found {sorted(bits)}")
    return {"bits": bits.pop(), "calibration": calibration}


def restore_quantized(arch: dict, state_dict: dict, quant: dict) -> nn.Module:
    """Rebuild a quantized model from ``float_state_dict`` and ``quant_state`` output (no calibration data
    needed). Outputs equal those of the saved model."""
    bits = int(quant["bits"])
    _check_bits(bits)
    model = build_model(arch)
    model.load_state_dict(state_dict)  # before wrapping: the wrapper copies the weights it finds
    quantizer = PtqQuantizer(model, _quant_config(bits), evaluator=None)
    quantizer.is_compressed = True  # a fresh PtqQuantizer would "bypass" (return floats) until calibrated
    quantizer.register_ptq_apply_method()
    calibration = quant["calibration"]
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
