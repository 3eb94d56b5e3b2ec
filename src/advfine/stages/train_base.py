"""Stage train_base: train the base model, standard (``st``, f_st) or adversarially (``rb``, f_rb: PGD, or TRADES
under ``adversarial.base_objective: trades``)."""
from __future__ import annotations

import logging
from dataclasses import replace

from advfine.core.cost import model_cost, training_macs
from advfine.core.data import load_prepared
from advfine.core.models import build_model, count_parameters, load_pretrained
from advfine.core.schedule import TrainSchedule
from advfine.core.train import resume_path_for, train_model
from advfine.pipeline.checkpoints import save_model
from advfine.pipeline.meter import Meter, restored_cost
from advfine.pipeline.records import StageRecord, write_stage_record
from advfine.pipeline.vocab import BASE_MODELS, stage_seed
from advfine.stages.common import (dataset_arch, metrics_record, precision_for, setup, training_health,
                                   training_objective)

log = logging.getLogger("advfine")


def run(config: dict, *, data: str, train: str, seed: int, out_model: str, out_metrics: str,
        threads: int = 1) -> StageRecord:
    """Train base model ``train`` of seed ``seed`` on the prepared dataset ``data``; write its checkpoint
    and metrics. Starts from ``model.pretrained`` when the config names a checkpoint."""
    if train not in BASE_MODELS:
        raise ValueError(f"unknown base model {train!r}; known: {sorted(BASE_MODELS)}")
    device = setup(config, seed, threads)
    dataset = load_prepared(data)
    arch = dataset_arch(config, dataset)
    model = build_model(arch)
    pretrained = config["model"]["pretrained"]
    if pretrained:
        load_pretrained(model, pretrained)
        log.info("base model starts from the pretrained checkpoint %s", pretrained)
    forward_macs = model_cost(model, dataset.input_shape)["macs"]
    meter = Meter(device).start()
    attack = training_objective(config, config["adversarial"]["base_objective"]) if train == "rb" else None
    resume = resume_path_for(out_model)
    precision = precision_for(config, device, fake_quantized=False)
    history = train_model(model, dataset.train_x, dataset.train_y, TrainSchedule.from_config(config["train"]), attack,
                          stage_seed("train_base", seed), device,
                          desc=f"train {train}", resume_path=resume, precision=precision)
    spent = meter.stop() + restored_cost(history)
    collapsed = training_health(model, dataset, device, f"training of base model {train}")
    model.cpu()
    save_model(out_model, model, arch, extra={"train": train, "seed": seed})
    macs = training_macs(history, len(dataset.train_y), forward_macs, attack)
    metrics = metrics_record(config, seed, device, "train_base", replace(spent, train_macs=macs), None,
                             attack is not None, collapsed,
                             train=train, history=history, params=count_parameters(model),
                             n_train=len(dataset.train_y), precision=precision, pretrained=pretrained,
                             attack=attack.describe() if attack else None)
    write_stage_record(out_metrics, metrics)
    resume.unlink(missing_ok=True)
    return metrics
