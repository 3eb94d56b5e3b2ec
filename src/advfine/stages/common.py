"""What every model stage does the same way: set up the job (threads, seed, device, backend flags),
choose the precision, build attacks from the config, judge a training run's health, and assemble a
metrics record whose ``stages`` list carries the cost (the ledger: ``records.Cost``) and health of every
stage that led to the model."""
from __future__ import annotations

import logging

import torch

from advfine.core.attacks.pgd import PGDAttack
from advfine.core.data import Dataset
from advfine.core.decision import correct
from advfine.core.evaluate import logits_of
from advfine.core.health import HEALTH_IMAGES, collapse_record, training_collapse
from advfine.core.models import default_arch
from advfine.core.objectives import objective_for
from advfine.core.quantize import calibration_batches, prepare_qat, quantize_ptq
from advfine.core.runtime import (check_precision, configure_backends, cpu_has_native_bf16, peak_gpu_mb, peak_rss_mb,
                                  resolve_device, seed_everything, set_threads, set_tf32)
from advfine.core.train import TrainingAttack
from advfine.pipeline.provenance import provenance
from advfine.pipeline.records import Cost, LineageEntry, StageRecord
from advfine.pipeline.vocab import PTQ, QAT, stage_seed

log = logging.getLogger("advfine")


def setup(config: dict, seed: int, threads: int, stable_shapes: bool = True) -> torch.device:
    """Threads, global seeds, the device (``config['device']``), cuDNN's flags (``stable_shapes``: the
    stage's batches keep one shape, so autotuning may pay off; ``runtime.configure_backends``) and TF32
    off until ``precision_for`` says otherwise."""
    set_threads(threads)
    seed_everything(seed)
    device = resolve_device(config["device"])
    configure_backends(device, config["deterministic"], stable_shapes)
    log.info("device %s, %d thread(s), seed %d, deterministic %s", device, threads, seed, config["deterministic"])
    return device


def precision_for(config: dict, device: torch.device, fake_quantized: bool) -> str:
    """The precision a stage computes in, with TF32 set to match: config key ``precision``, except for
    fake-quantized models, which always run in fp32 (bf16 has 8 significant bits and TF32 11: neither
    holds an INT16 grid, nor an INT8 grid times its scale)."""
    precision = check_precision(config["precision"])
    if fake_quantized and precision != "fp32":
        log.info("precision %s asked for, but this model is fake-quantized: computing in fp32", precision)
        precision = "fp32"
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        log.warning("precision bf16 on a CPU without AVX-512 BF16 or AMX: bf16 is emulated here and "
                    "slower than fp32 (results are still valid)")
    if precision == "tf32" and device.type != "cuda":
        log.info("precision tf32 on %s: TF32 is a GPU tensor-core format, so this computes in fp32", device.type)
    set_tf32(precision == "tf32")
    return precision


def attack_from_config(config: dict, which: str) -> PGDAttack:
    """The PGD attack of ``attack.<which>`` (train or eval) in the config's threat model (``PGDAttack.from_config``)."""
    return PGDAttack.from_config(config["attack"], which)


def training_objective(config: dict, mode: str) -> TrainingAttack:
    """What adversarial training mode ``mode`` (ad, fgsm, nfgsm, trades) trains on, at ``attack.train``'s eps
    (settings: the config's ``adversarial`` section)."""
    return objective_for(mode, attack_from_config(config, "train"), config["adversarial"])


def fake_quantize(model: torch.nn.Module, method: str, bits: int, train_x: torch.Tensor, config: dict,
                  seed: int) -> tuple[torch.nn.Module, int]:
    """``model`` fake-quantized at ``bits`` as config section ``compress`` says: post-training quantized
    (``method`` ptq) or prepared for quantization-aware training (qat), calibrated on training images
    drawn from the node's compression seed; and how many images calibrated it. The one reader of the
    section's quantization keys."""
    settings = config["compress"]
    batches = calibration_batches(train_x, settings["calibration_batches"], settings["calibration_batch_size"],
                                  stage_seed("compress", seed))
    quantize = {PTQ: quantize_ptq, QAT: prepare_qat}[method]
    return quantize(model, int(bits), batches, settings["quantize_first_input"]), sum(len(b) for b in batches)


def dataset_arch(config: dict, data: Dataset) -> dict:
    """The arch dict of an unpruned ``model.arch`` for the prepared dataset."""
    return default_arch(config["model"]["arch"], data.in_channels, data.num_classes, data.input_size,
                        data.mean, data.std)


def training_health(model: torch.nn.Module, data: Dataset, device, desc: str) -> str | None:
    """Why the model that training run ``desc`` ended with collapsed (``health.training_collapse``, on
    clean training images), or None; a collapse is logged loudly: the model is kept, and reported as
    collapsed. A model with non-finite logits is left to the evaluation, which reports it as diverged."""
    n = min(HEALTH_IMAGES, len(data.train_y))
    logits = logits_of(model, data.train_x[:n], 256, device)
    if not torch.isfinite(logits).all():
        return None
    labels = data.train_y[:n]
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    predictions = logits.argmax(1)
    accuracy = correct(logits, labels).float().mean().item()
    reason = training_collapse(loss, accuracy, predictions.tolist(), data.num_classes)
    if reason:
        log.warning("COLLAPSED: %s ended as a constant classifier (%s); its model and every node built on it "
                    "are reported as collapsed, never averaged", desc, reason)
    return reason


def metrics_record(config: dict, seed: int, device, stage: str, spent: Cost, parent: StageRecord | None,
                   adversarial: bool = False, collapsed_reason: str | None = None, **details) -> StageRecord:
    """A stage's metrics: its own ``details``, whether its training collapsed (``collapsed_reason`` from
    ``training_health``), provenance, and ``stages``: the lineage of every stage that produced this model
    (what it ``spent``: wall, CPU and GPU time, training MACs, energy; adversarial or not, device, peak
    memory, collapsed or not), oldest first."""
    peak = peak_rss_mb()
    health = collapse_record(collapsed_reason)
    peak_gpu = peak_gpu_mb(device)
    own = LineageEntry(stage=stage, wall_time_s=spent.wall_time_s, estimated_macs=int(spent.train_macs),
                       adversarial=bool(adversarial), device=str(device), peak_rss_mb=peak, **health,
                       cpu_time_s=spent.cpu_time_s, energy_j=spent.energy_j, energy_method=spent.energy_method,
                       peak_gpu_mb=peak_gpu, gpu_time_s=spent.gpu_time_s)
    return StageRecord(stage=stage, wall_time_s=spent.wall_time_s, stages=[*(parent.stages if parent else []), own],
                       **health, peak_rss_mb=peak, provenance=provenance(config, seed, device), details=details,
                       peak_gpu_mb=peak_gpu)
