"""Stage finetune: standard (``st``) or adversarial (``ad``) fine-tuning of a (compressed) model, starting
from its weights, with the settings of its compression method (the paper's Appendix A.1)."""
from __future__ import annotations

import time

from ..checkpoints import load_model, save_model
from ..quantize import is_quantized
from ..cost import model_cost, training_macs
from ..data import load_prepared
from ..files import read_json, write_json
from ..train import restored_wall_time, resume_path_for, train_model
from ..vocab import parse_compression, stage_seed
from .common import attack_from_config, metrics_record, precision_for, setup


def finetune_settings(config: dict, method: str) -> dict:
    """Training settings of fine-tuning after ``method`` (dense, prune, ptq, qat): the shared epochs,
    batch size, warm-up and augmentation of ``finetune`` with the method's own lr and momentum."""
    ft = config["finetune"]
    if method not in ft:
        raise ValueError(f"config key finetune.{method}: missing (lr and momentum of fine-tuning after {method})")
    return {"epochs": ft["epochs"], "batch_size": ft["batch_size"], "lr_drop_epoch": None,
            "eps_warmup_epochs": ft["eps_warmup_epochs"], "augment": ft["augment"], **ft[method]}


def run(config: dict, *, data: str, compression: str, mode: str, seed: int, model: str, metrics: str,
        out_model: str, out_metrics: str, threads: int = 1) -> dict:
    """Fine-tune the model at ``model`` (node ``compression``): ``st`` standard, ``ad`` adversarial."""
    if mode not in ("st", "ad"):
        raise ValueError(f"unknown fine-tuning mode {mode!r}; expected st or ad ('none' needs no job)")
    method, _ = parse_compression(compression)
    device = setup(config, seed, threads)
    parent = read_json(metrics)
    start_model, ckpt = load_model(model)
    dataset = load_prepared(data)
    settings = finetune_settings(config, method)
    attack = attack_from_config(config, "train") if mode == "ad" else None
    forward_macs = model_cost(start_model, dataset.input_shape)["macs"]
    start = time.perf_counter()
    resume = resume_path_for(out_model)
    precision = precision_for(config, device, fake_quantized=is_quantized(start_model))
    history = train_model(start_model, dataset.train_x, dataset.train_y, settings, attack,
                          stage_seed("finetune", seed), device, desc=f"finetune {mode} {compression}",
                          resume_path=resume, precision=precision)
    wall = time.perf_counter() - start + restored_wall_time(history)
    start_model.cpu()
    save_model(out_model, start_model, ckpt["arch"], extra={"finetune": mode, "parent": str(model)})
    macs = training_macs(history, len(dataset.train_y), forward_macs, attack.steps if attack else 0)
    record = metrics_record(config, seed, device, "finetune", wall, parent, macs, attack is not None,
                            finetune=mode, settings=settings, history=history,
                            attack=attack.describe() if attack else None, precision=precision)
    write_json(out_metrics, record)
    resume.unlink(missing_ok=True)
    return record
