"""The workflow's stages as plain functions: each reads its inputs, does the work through the
package, and writes its checkpoint and metrics JSON. The Snakemake scripts only pass paths and
config sections in. Every metrics file carries ``stages``: the wall time of every stage that led
to it, so an evaluation knows the full training cost of the model it measured."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from . import artifacts
from .attacks import PGDAttack
from .data import load_dataset, load_prepared, save_prepared
from .evaluate import evaluate_model
from .models import build_model, count_parameters, default_arch
from .runtime import resolve_device, seed_everything, set_threads
from .train import train_model

log = logging.getLogger("advfine")

BASE_MODELS = {"st": "standard training", "rb": "PGD adversarial training"}


def parse_compression(label: str) -> tuple[str, float | int | None]:
    """'dense' -> ('dense', None); 'prune-0.8' -> ('prune', 0.8); 'ptq-int8' -> ('ptq', 8)."""
    if label == "dense":
        return "dense", None
    method, _, level = label.partition("-")
    try:
        if method == "prune":
            return "prune", float(level)
        if method == "ptq" and level.startswith("int"):
            return "ptq", int(level[3:])
    except ValueError:
        pass
    raise ValueError(f"unknown compression {label!r}; expected dense, prune-<sparsity> or ptq-int<bits>")


def compression_label(method: str, level: float | int | None = None) -> str:
    if method == "dense":
        return "dense"
    if method == "prune":
        return f"prune-{float(level):g}"
    if method == "ptq":
        return f"ptq-int{int(level)}"
    raise ValueError(f"unknown compression method {method!r}")


def _setup(config: dict, seed: int, threads: int) -> torch.device:
    set_threads(threads)
    seed_everything(seed)
    device = resolve_device(config.get("device", "auto"))
    log.info("device %s, %d thread(s), seed %d", device, threads, seed)
    return device


def _attack(config: dict, which: str) -> PGDAttack:
    return PGDAttack.from_config(config["attack"][which])


def _metrics(config: dict, seed: int, device, stage: str, wall: float, parent: dict | None, **fields) -> dict:
    stages = list(parent["stages"]) if parent else []
    stages.append({"stage": stage, "wall_time_s": wall})
    return {"stage": stage, "wall_time_s": wall, "stages": stages, **fields,
            "provenance": artifacts.provenance(config, seed, device)}


def run_prepare_data(config: dict, out_data: str) -> dict:
    """Load and preprocess the dataset once (split, scaling, subsets) into one tensor file."""
    start = time.perf_counter()
    data = load_dataset(config["data"])
    save_prepared(data, out_data)
    info = {"name": data.name, "n_train": len(data.train_y), "n_test": len(data.test_y),
            "shape": list(data.train_x.shape[1:]), "wall_time_s": time.perf_counter() - start}
    log.info("prepared %s", info)
    return info


def run_train_base(config: dict, data_path: str, train: str, seed: int, out_model: str, out_metrics: str,
                   threads: int = 1) -> dict:
    """Train the base model: ``st`` (standard) or ``rb`` (PGD adversarial training)."""
    if train not in BASE_MODELS:
        raise ValueError(f"unknown base model {train!r}; known: {sorted(BASE_MODELS)}")
    device = _setup(config, seed, threads)
    data = load_prepared(data_path)
    arch = default_arch(config["model"]["arch"], data.in_channels, data.num_classes, data.input_size,
                        data.mean, data.std)
    model = build_model(arch)
    start = time.perf_counter()
    attack = _attack(config, "train") if train == "rb" else None
    history = train_model(model, data.train_x, data.train_y, config["train"], attack, seed, device,
                          desc=f"train {train}")
    wall = time.perf_counter() - start
    model.cpu()
    artifacts.save_checkpoint(out_model, model.state_dict(), arch, extra={"train": train, "seed": seed})
    metrics = _metrics(config, seed, device, "train_base", wall, None, train=train, history=history,
                       params=count_parameters(model), n_train=len(data.train_y),
                       attack=attack.describe() if attack else None)
    artifacts.write_json(out_metrics, metrics)
    return metrics


def _calibration_batches(x: torch.Tensor, n_batches: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """A few fixed random training batches (no labels) for PTQ calibration."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=g)[: n_batches * batch_size]
    return [x[i] for i in idx.split(batch_size)]


def run_compress(config: dict, data_path: str, compression: str, seed: int, parent_model: str, parent_metrics: str,
                 out_model: str, out_metrics: str, threads: int = 1) -> dict:
    """Compress a trained model: L1 filter pruning (filters removed) or NNI post-training
    quantization. The parent checkpoint is only read; the result is a new node."""
    from .compress import float_state_dict, prune_filters_l1, quant_state, quantize_ptq
    from .cost import model_cost

    method, level = parse_compression(compression)
    if method == "dense":
        raise ValueError("'dense' is not a compression; the base model is used directly")
    device = _setup(config, seed, threads)
    parent = artifacts.read_json(parent_metrics)
    model, ckpt = artifacts.load_model(parent_model)
    data = load_prepared(data_path)
    start = time.perf_counter()
    example = data.train_x[:2]
    if method == "prune":
        compressed, arch = prune_filters_l1(model, ckpt["arch"], level, example)
        state, quant = compressed.state_dict(), None
    else:
        cal = config["compress"]
        batches = _calibration_batches(data.train_x, int(cal["calibration_batches"]),
                                       int(cal["calibration_batch_size"]), seed)
        compressed = quantize_ptq(model, int(level), batches)
        arch, state, quant = ckpt["arch"], float_state_dict(compressed), quant_state(compressed)
    wall = time.perf_counter() - start
    cost = model_cost(compressed, tuple(data.train_x.shape[1:]))
    artifacts.save_checkpoint(out_model, state, arch, quant,
                              extra={"compression": compression, "parent": str(parent_model)})
    metrics = _metrics(config, seed, device, "compress", wall, parent, compression=compression,
                       method=method, level=level, arch=arch, parent_params=count_parameters(model),
                       **cost)
    artifacts.write_json(out_metrics, metrics)
    return metrics


def finetune_settings(config: dict, method: str) -> dict:
    """Training settings of fine-tuning after ``method`` (the paper's Appendix A.1: pruning lr 0.1,
    PTQ lr 0.01 with momentum 0.9), with the shared epochs and batch size."""
    ft = config["finetune"]
    return {"epochs": ft["epochs"], "batch_size": ft["batch_size"], "lr_drop_epoch": None,
            "eps_warmup_epochs": ft.get("eps_warmup_epochs", 0), **ft[method]}


def run_finetune(config: dict, data_path: str, compression: str, mode: str, seed: int, parent_model: str,
                 parent_metrics: str, out_model: str, out_metrics: str, threads: int = 1) -> dict:
    """Fine-tune a (compressed) model, starting from its weights: ``st`` standard, ``ad`` adversarial."""
    if mode not in ("st", "ad"):
        raise ValueError(f"unknown fine-tuning mode {mode!r}; expected st or ad ('none' needs no job)")
    method, _ = parse_compression(compression)
    device = _setup(config, seed, threads)
    parent = artifacts.read_json(parent_metrics)
    model, ckpt = artifacts.load_model(parent_model)
    data = load_prepared(data_path)
    settings = finetune_settings(config, method)
    attack = _attack(config, "train") if mode == "ad" else None
    start = time.perf_counter()
    history = train_model(model, data.train_x, data.train_y, settings, attack, seed + 1000, device,
                          desc=f"finetune {mode} {compression}")
    wall = time.perf_counter() - start
    model.cpu()
    if ckpt["quant"] is not None:
        from .compress import float_state_dict, quant_state

        state, quant = float_state_dict(model), quant_state(model)
    else:
        state, quant = model.state_dict(), None
    artifacts.save_checkpoint(out_model, state, ckpt["arch"], quant,
                              extra={"finetune": mode, "parent": str(parent_model)})
    metrics = _metrics(config, seed, device, "finetune", wall, parent, finetune=mode, settings=settings,
                       history=history, attack=attack.describe() if attack else None)
    artifacts.write_json(out_metrics, metrics)
    return metrics


def run_evaluate(config: dict, data_path: str, experiment: str, train: str, compression: str, finetune: str,
                 seed: int, model_path: str, model_metrics: str, out_eval: str, threads: int = 1) -> dict:
    """Clean and PGD robust accuracy on the test set, plus the model's cost and full provenance.
    Fake-quantized models are also attacked through their float twin (transfer attack)."""
    from .cost import model_cost, weight_storage_bytes

    device = _setup(config, seed, threads)
    upstream = artifacts.read_json(model_metrics)
    model, ckpt = artifacts.load_model(model_path)
    data = load_prepared(data_path)
    method, level = parse_compression(compression)
    attack = _attack(config, "eval")
    ev = config["evaluate"]
    transfer_source = None
    if ckpt["quant"] is not None and ev.get("transfer_attack_for_quantized", True):
        from .compress import float_state_dict

        transfer_source = build_model(ckpt["arch"])
        transfer_source.load_state_dict(float_state_dict(model))
        transfer_source.eval()
    start = time.perf_counter()
    result = evaluate_model(model, data.test_x, data.test_y, attack, int(ev["batch_size"]), device,
                            seed + 2000, transfer_source)
    wall = time.perf_counter() - start
    model.cpu()
    cost = model_cost(model, tuple(data.train_x.shape[1:]))
    bits = int(level) if method == "ptq" else None
    record = {
        "experiment": experiment, "dataset": data.name, "arch": config["model"]["arch"],
        "seed": seed, "train": train, "compression": compression, "method": method, "level": level,
        "finetune": finetune, **result,
        "params": cost["params"], "macs": cost["macs"],
        "checkpoint_bytes": Path(model_path).stat().st_size,
        "weight_bytes": weight_storage_bytes(model, bits),
        "device": str(device), "eval_wall_time_s": wall, "stages": upstream["stages"],
        "model_path": str(model_path), "provenance": artifacts.provenance(config, seed, device),
    }
    artifacts.write_json(out_eval, record)
    return record



def run_aggregate(eval_paths: list[str], out_csv: str, tables_dir: str, prune_sparsity: float,
                  ptq_bits: int) -> None:
    """all_metrics.csv and Tables 2, 3, 5 (CSV + Markdown) from the per-model eval.json files."""
    from .report import collect_metrics, write_metrics_csv, write_tables

    df = collect_metrics(eval_paths)
    write_metrics_csv(df, out_csv)
    write_tables(df, tables_dir, prune_sparsity, ptq_bits)


def run_plot(metrics_csv: str, out_figure1: str, out_figure3: str) -> None:
    """Figures 1 and 3 from all_metrics.csv."""
    import pandas as pd

    from .report import plot_figure1, plot_figure3

    df = pd.read_csv(metrics_csv)
    plot_figure1(df, out_figure1)
    plot_figure3(df, out_figure3)
