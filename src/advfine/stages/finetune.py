"""Stage finetune: fine-tuning of a (compressed) model from its weights, with the settings of its compression
method (the paper's Appendix A.1): standard (``st``) or adversarial (``ad``: PGD), and the control arms
(``sweep.controls``): FGSM-RS (``fgsm``), N-FGSM (``nfgsm``) and TRADES (``trades``) fine-tuning at the same
epochs, FGSM-RS and N-FGSM at the same compute (``fgsm-eqcost``, ``nfgsm-eqcost``), and PGD training of the compressed architecture from random initialization (``scratch``: the
fine-tuning budget; ``scratch-full``: the base-training budget, ``train`` settings)."""
from __future__ import annotations

import logging
from dataclasses import replace

import torch
from torch import nn

from advfine.core.cost import model_cost, step_passes, training_macs
from advfine.core.data import load_prepared
from advfine.core.models import build_model
from advfine.core.quantize import is_quantized
from advfine.core.schedule import TrainSchedule, finetune_section
from advfine.core.train import resume_path_for, train_model
from advfine.pipeline.checkpoints import load_model, save_model
from advfine.pipeline.meter import Meter, restored_cost
from advfine.pipeline.records import StageRecord, read_stage_record, write_stage_record
from advfine.pipeline.vocab import (ADVERSARIAL_FINETUNING, CONTROLS, EQUAL_COST_SUFFIX, FINETUNE_MODES, QAT,
                                    QUANTIZATION_METHODS, SCRATCH_CONTROLS, parse_compression, stage_seed)
from advfine.stages.common import (attack_from_config, fake_quantize, metrics_record, precision_for, setup,
                                   training_health, training_objective)

log = logging.getLogger("advfine")

MODES = tuple(m for m in [*FINETUNE_MODES, *CONTROLS] if m != "none")


def equal_cost_epochs(epochs: int, pgd_steps: int, steps: int) -> int:
    """Epochs of an adversarial arm with ``steps`` gradient steps per batch that cost what ``epochs`` of PGD
    fine-tuning with ``pgd_steps`` cost, by the MACs estimate of ``cost.training_macs`` (``cost.step_passes``
    forward passes an example), rounded: a machine-independent stand-in for equal wall time (the
    controls table shows the measured wall times beside)."""
    return max(1, round(epochs * step_passes(pgd_steps) / step_passes(steps)))


def reinitialized(compression: str, arch: dict, config: dict, train_x: torch.Tensor,
                  seed: int) -> tuple[nn.Module, int]:
    """The architecture of node ``compression`` (its checkpoint's ``arch``) with fresh random weights, drawn
    after ``setup`` seeded the node: a plain or pruned model rebuilt from ``arch``; for a quantized node, a
    random float model prepared for QAT at its bit width and calibrated on training images (its activation
    ranges then move as it trains, as in QAT); and how many images calibrated it (0: none)."""
    fresh = build_model(arch)
    method, bits = parse_compression(compression)
    if method not in QUANTIZATION_METHODS:
        return fresh, 0
    return fake_quantize(fresh, QAT, int(bits), train_x, config, seed)


def run(config: dict, *, data: str, compression: str, mode: str, seed: int, model: str, metrics: str,
        out_model: str, out_metrics: str, threads: int = 1) -> StageRecord:
    """Fine-tune the model at ``model`` (node ``compression``) in ``mode`` (see the module docstring); the
    from-scratch modes read it for its architecture only."""
    if mode not in MODES:
        raise ValueError(f"unknown fine-tuning mode {mode!r}; expected one of {list(MODES)} ('none' needs no job)")
    method, _ = parse_compression(compression)
    device = setup(config, seed, threads)
    parent = read_stage_record(metrics)
    start_model, ckpt = load_model(model)
    dataset = load_prepared(data)
    settings = config["train"] if mode == "scratch-full" else finetune_section(config["finetune"], method,
                                                                                scratch=mode == "scratch")
    scratch = mode in SCRATCH_CONTROLS
    meter = Meter(device).start()
    calibration_images = 0
    if scratch:
        start_model, calibration_images = reinitialized(compression, ckpt["arch"], config, dataset.train_x, seed)
        log.info("%s: PGD training of the %s architecture from random initialization", mode, compression)
    adversarial = scratch or mode in ADVERSARIAL_FINETUNING
    objective = "ad" if scratch else mode.removesuffix(EQUAL_COST_SUFFIX)
    attack = training_objective(config, objective) if adversarial else None
    if mode.endswith(EQUAL_COST_SUFFIX):
        epochs = TrainSchedule.from_config(settings).epochs
        pgd_steps = attack_from_config(config, "train").steps
        settings = settings | {"epochs": equal_cost_epochs(epochs, pgd_steps, attack.steps)}
    schedule = TrainSchedule.from_config(settings)
    forward_macs = model_cost(start_model, dataset.input_shape)["macs"]
    resume = resume_path_for(out_model)
    precision = precision_for(config, device, fake_quantized=is_quantized(start_model))
    history = train_model(start_model, dataset.train_x, dataset.train_y, schedule, attack,
                          stage_seed("finetune", seed), device, desc=f"finetune {mode} {compression}",
                          resume_path=resume, precision=precision)
    spent = meter.stop() + restored_cost(history)
    collapsed = training_health(start_model, dataset, device, f"fine-tuning {mode} of {compression}")
    start_model.cpu()
    save_model(out_model, start_model, ckpt["arch"], extra={"finetune": mode, "parent": str(model),
                                                            "init": "random" if scratch else "parent"})
    macs = training_macs(history, len(dataset.train_y), forward_macs, attack, calibration_images)
    # a model trained from scratch owes nothing to its base model's training: its lineage is this stage alone
    record = metrics_record(config, seed, device, "finetune", replace(spent, train_macs=macs),
                            None if scratch else parent, adversarial, collapsed,
                            finetune=mode, init="random" if scratch else "parent",
                            settings=settings, history=history, attack=attack.describe() if attack else None,
                            precision=precision)
    write_stage_record(out_metrics, record)
    resume.unlink(missing_ok=True)
    return record
