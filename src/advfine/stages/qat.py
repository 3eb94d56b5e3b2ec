"""Stage qat: quantization-aware training (Jacob et al. 2018) at one bit width, with the base model's kind
of training: standard under ``st``, PGD-adversarial under ``rb`` (the paper's f_rb^q with QAT)."""
from __future__ import annotations

from dataclasses import replace

from advfine.core.cost import model_cost, training_macs
from advfine.core.data import load_prepared
from advfine.core.models import build_model
from advfine.core.schedule import TrainSchedule
from advfine.core.train import resume_path_for, train_model
from advfine.pipeline.checkpoints import load_model, save_model
from advfine.pipeline.meter import Meter, restored_cost
from advfine.pipeline.records import StageRecord, read_stage_record, write_stage_record
from advfine.pipeline.vocab import BASE_MODELS, QAT, compression_label, stage_seed
from advfine.stages.common import (attack_from_config, dataset_arch, fake_quantize, metrics_record, setup,
                                   training_health)


def run(config: dict, *, data: str, bits: int, train: str, seed: int, out_model: str, out_metrics: str,
        model: str | None = None, metrics: str | None = None, threads: int = 1) -> StageRecord:
    """QAT of base model ``train`` at ``bits``. ``compress.qat.init`` says where it starts: the trained
    base model at ``model`` (``parent``: the paper's CIFAR-10 protocol) or a fresh random init
    (``scratch``: its Fashion-MNIST protocol; then no parent is read)."""
    if train not in BASE_MODELS:
        raise ValueError(f"unknown base model {train!r}; known: {sorted(BASE_MODELS)}")
    compression = compression_label("qat", bits)
    qat_cfg = config["qat"]
    device = setup(config, seed, threads)
    dataset = load_prepared(data)
    if qat_cfg["init"] == "parent":
        if model is None or metrics is None:
            raise ValueError("config key qat.init is 'parent' but no parent model was given")
        parent = read_stage_record(metrics)
        start_model, ckpt = load_model(model)
        arch = ckpt["arch"]
    else:
        parent, arch = None, dataset_arch(config, dataset)
        start_model = build_model(arch)  # seeded by setup
    meter = Meter(device).start()
    qmodel, calibration_images = fake_quantize(start_model, QAT, int(bits), dataset.train_x, config, seed)
    forward_macs = model_cost(qmodel, dataset.input_shape)["macs"]
    attack = attack_from_config(config, "train") if train == "rb" else None
    resume = resume_path_for(out_model)
    history = train_model(qmodel, dataset.train_x, dataset.train_y, TrainSchedule.from_config(qat_cfg), attack,
                          stage_seed("qat", seed), device, desc=f"QAT int{bits} {train}", resume_path=resume)
    spent = meter.stop() + restored_cost(history)
    collapsed = training_health(qmodel, dataset, device, f"QAT {compression} of base model {train}")
    qmodel.cpu()
    parent_ref = None if model is None else str(model)
    save_model(out_model, qmodel, arch,
               extra={"compression": compression, "parent": parent_ref, "init": qat_cfg["init"]})
    macs = training_macs(history, len(dataset.train_y), forward_macs, attack, calibration_images)
    # in a model's lineage QAT takes the place of compression (the report's "compress" columns)
    record = metrics_record(config, seed, device, "compress", replace(spent, train_macs=macs), parent,
                            attack is not None, collapsed,
                            compression=compression, method="qat", level=bits, init=qat_cfg["init"], arch=arch,
                            history=history, attack=attack.describe() if attack else None, precision="fp32",
                            **model_cost(qmodel, dataset.input_shape))
    write_stage_record(out_metrics, record)
    resume.unlink(missing_ok=True)
    return record
