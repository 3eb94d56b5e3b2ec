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
from .runtime import (check_precision, configure_backends, cpu_has_native_bf16, peak_rss_mb, place_model,
                      resolve_device, seed_everything, set_threads)
from .train import restored_wall_time, resume_path_for, train_model

log = logging.getLogger("advfine")

BASE_MODELS = {"st": "standard training", "rb": "PGD adversarial training"}


QUANTIZATION_METHODS = ("ptq", "qat")  # post-training quantization, quantization-aware training


def parse_compression(label: str) -> tuple[str, float | int | None]:
    """'dense' -> ('dense', None); 'prune-0.8' -> ('prune', 0.8); 'ptq-int8' -> ('ptq', 8);
    'qat-int4' -> ('qat', 4)."""
    if label == "dense":
        return "dense", None
    method, _, level = label.partition("-")
    try:
        if method == "prune":
            return "prune", float(level)
        if method in QUANTIZATION_METHODS and level.startswith("int"):
            return method, int(level[3:])
    except ValueError:
        pass
    raise ValueError(f"unknown compression {label!r}; expected dense, prune-<sparsity>, ptq-int<bits> "
                     "or qat-int<bits>")


def compression_label(method: str, level: float | int | None = None) -> str:
    if method == "dense":
        return "dense"
    if method == "prune":
        return f"prune-{float(level):g}"
    if method in QUANTIZATION_METHODS:
        return f"{method}-int{int(level)}"
    raise ValueError(f"unknown compression method {method!r}")


def _setup(config: dict, seed: int, threads: int) -> torch.device:
    set_threads(threads)
    seed_everything(seed)
    device = resolve_device(config.get("device", "auto"))
    configure_backends(device, bool(config.get("deterministic", True)))
    log.info("device %s, %d thread(s), seed %d", device, threads, seed)
    return device


def _precision(config: dict, device: torch.device, fake_quantized: bool) -> str:
    """The precision a stage computes in: config key ``precision``, except for fake-quantized models,
    which always run in fp32 (bf16 has 8 significant bits: it cannot hold an INT16 or INT8 grid)."""
    precision = check_precision(config.get("precision", "fp32"))
    if fake_quantized and precision != "fp32":
        log.info("precision %s asked for, but this model is fake-quantized: computing in fp32", precision)
        return "fp32"
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        log.warning("precision bf16 on a CPU without AVX-512 BF16 or AMX: bf16 is emulated here and "
                    "slower than fp32 (results are still valid)")
    return precision


def _attack(config: dict, which: str) -> PGDAttack:
    return PGDAttack.from_config(config["attack"][which], config["attack"].get("eps_space", "pixel"))


def training_macs(history: list[dict], n_examples: int, forward_macs: int, attack_steps: int) -> int:
    """Multiply-accumulates a training run spent, estimated from its epochs: a training step costs
    about 3 forward passes (forward, backward to activations and to weights), a PGD step about 2
    (forward, backward to the input only); an epoch with eps > 0 runs ``attack_steps`` of them."""
    total = 0
    for epoch in history:
        steps = attack_steps if epoch.get("eps", 0.0) > 0 else 0
        total += n_examples * (3 + 2 * steps) * forward_macs
    return int(total)


def _metrics(config: dict, seed: int, device, stage: str, wall: float, parent: dict | None,
             estimated_macs: int = 0, adversarial: bool = False, **fields) -> dict:
    """A stage's metrics: its own fields, provenance, and ``stages``: the lineage of every stage that
    produced this model (wall time, estimated MACs, adversarial or not, device), oldest first."""
    stages = list(parent["stages"]) if parent else []
    peak = peak_rss_mb()
    stages.append({"stage": stage, "wall_time_s": wall, "estimated_macs": int(estimated_macs),
                   "adversarial": bool(adversarial), "device": str(device), "peak_rss_mb": peak})
    return {"stage": stage, "wall_time_s": wall, "stages": stages, **fields, "peak_rss_mb": peak,
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
    arch = _dataset_arch(config, data)
    model = build_model(arch)
    pretrained = config["model"].get("pretrained")
    if pretrained:
        from .models import load_pretrained

        load_pretrained(model, pretrained)
        log.info("base model starts from the pretrained checkpoint %s", pretrained)
    forward_macs = _forward_macs(model, data)
    start = time.perf_counter()
    attack = _attack(config, "train") if train == "rb" else None
    resume = resume_path_for(out_model)
    precision = _precision(config, device, fake_quantized=False)
    history = train_model(model, data.train_x, data.train_y, config["train"], attack, seed, device,
                          desc=f"train {train}", resume_path=resume, precision=precision)
    wall = time.perf_counter() - start + restored_wall_time(history)
    model.cpu()
    artifacts.save_checkpoint(out_model, model.state_dict(), arch, extra={"train": train, "seed": seed})
    macs = training_macs(history, len(data.train_y), forward_macs, attack.steps if attack else 0)
    metrics = _metrics(config, seed, device, "train_base", wall, None, macs, attack is not None, train=train,
                       history=history, params=count_parameters(model), n_train=len(data.train_y), precision=precision,
                       pretrained=pretrained, attack=attack.describe() if attack else None)
    artifacts.write_json(out_metrics, metrics)
    resume.unlink(missing_ok=True)
    return metrics


def _dataset_arch(config: dict, data) -> dict:
    return default_arch(config["model"]["arch"], data.in_channels, data.num_classes, data.input_size,
                        data.mean, data.std)


def _cost(model, data) -> dict:
    """Parameters and multiply-accumulates of one input of the dataset."""
    from .cost import model_cost

    return model_cost(model, tuple(data.train_x.shape[1:]))


def _forward_macs(model, data) -> int:
    return _cost(model, data)["macs"]


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

    method, level = parse_compression(compression)
    if method not in ("prune", "ptq"):
        raise ValueError(f"run_compress does prune-* and ptq-int*, not {compression!r} "
                         "(dense needs no job; QAT is run_quantization_aware_training)")
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
        batches = _calibration(config, data, seed)
        compressed = quantize_ptq(model, int(level), batches)
        arch, state, quant = ckpt["arch"], float_state_dict(compressed), quant_state(compressed)
    wall = time.perf_counter() - start
    cost = _cost(compressed, data)
    artifacts.save_checkpoint(out_model, state, arch, quant,
                              extra={"compression": compression, "parent": str(parent_model)})
    # PTQ's only compute is the calibration forward passes; pruning's is negligible
    macs = sum(len(b) for b in batches) * cost["macs"] if method == "ptq" else 0
    metrics = _metrics(config, seed, device, "compress", wall, parent, macs, False, compression=compression,
                       method=method, level=level, arch=arch, parent_params=count_parameters(model),
                       **cost)
    artifacts.write_json(out_metrics, metrics)
    return metrics


def _calibration(config: dict, data, seed: int) -> list[torch.Tensor]:
    cal = config["compress"]
    return _calibration_batches(data.train_x, int(cal["calibration_batches"]), int(cal["calibration_batch_size"]),
                                seed)


def run_quantization_aware_training(config: dict, data_path: str, compression: str, train: str, seed: int,
                                    parent_model: str | None, parent_metrics: str | None, out_model: str,
                                    out_metrics: str, threads: int = 1) -> dict:
    """QAT (Jacob et al. 2018): train a fake-quantized model whose quantization ranges follow the
    weights and activations, with the base model's kind of training: standard under ``st``, PGD
    adversarial under ``rb`` (the paper's f_rb^q with QAT). ``compress.qat.init`` says where it starts:
    the trained base model's weights (``parent``: the paper's CIFAR-10 protocol) or a fresh random
    init (``scratch``: its Fashion-MNIST protocol; then no parent is read)."""
    from .compress import float_state_dict, prepare_qat, quant_state

    method, bits = parse_compression(compression)
    if method != "qat":
        raise ValueError(f"run_quantization_aware_training needs a qat-int<bits> label, got {compression!r}")
    if train not in BASE_MODELS:
        raise ValueError(f"unknown base model {train!r}; known: {sorted(BASE_MODELS)}")
    qat_cfg = config["compress"]["qat"]
    device = _setup(config, seed, threads)
    data = load_prepared(data_path)
    if qat_cfg["init"] == "parent":
        if parent_model is None or parent_metrics is None:
            raise ValueError("compress.qat.init is 'parent' but no parent model was given")
        parent = artifacts.read_json(parent_metrics)
        model, ckpt = artifacts.load_model(parent_model)
        arch = ckpt["arch"]
    else:
        parent, arch = None, _dataset_arch(config, data)
        model = build_model(arch)  # seeded by _setup
    start = time.perf_counter()
    qmodel = prepare_qat(model, int(bits), _calibration(config, data, seed))
    forward_macs = _forward_macs(qmodel, data)
    attack = _attack(config, "train") if train == "rb" else None
    resume = resume_path_for(out_model)
    history = train_model(qmodel, data.train_x, data.train_y, qat_cfg, attack, seed + 3000, device,
                          desc=f"QAT int{bits} {train}", resume_path=resume)
    wall = time.perf_counter() - start + restored_wall_time(history)
    qmodel.cpu()
    parent_ref = None if parent_model is None else str(parent_model)
    artifacts.save_checkpoint(out_model, float_state_dict(qmodel), arch, quant_state(qmodel),
                              extra={"compression": compression, "parent": parent_ref, "init": qat_cfg["init"]})
    macs = training_macs(history, len(data.train_y), forward_macs, attack.steps if attack else 0)
    metrics = _metrics(config, seed, device, "compress", wall, parent, macs, attack is not None,
                       compression=compression, method=method, level=bits, init=qat_cfg["init"], arch=arch,
                       history=history, attack=attack.describe() if attack else None, precision="fp32",
                       **_cost(qmodel, data))
    artifacts.write_json(out_metrics, metrics)
    resume.unlink(missing_ok=True)
    return metrics


def finetune_settings(config: dict, method: str) -> dict:
    """Training settings of fine-tuning after ``method`` (the paper's Appendix A.1: pruning lr 0.1,
    PTQ lr 0.01 with momentum 0.9), with the shared epochs and batch size."""
    ft = config["finetune"]
    if method not in ft:
        raise ValueError(f"config key finetune.{method}: missing (lr and momentum of fine-tuning after {method})")
    return {"epochs": ft["epochs"], "batch_size": ft["batch_size"], "lr_drop_epoch": None,
            "eps_warmup_epochs": ft.get("eps_warmup_epochs", 0), "augment": ft.get("augment", False),
            **ft[method]}


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
    forward_macs = _forward_macs(model, data)
    start = time.perf_counter()
    resume = resume_path_for(out_model)
    precision = _precision(config, device, fake_quantized=ckpt["quant"] is not None)
    history = train_model(model, data.train_x, data.train_y, settings, attack, seed + 1000, device,
                          desc=f"finetune {mode} {compression}", resume_path=resume, precision=precision)
    wall = time.perf_counter() - start + restored_wall_time(history)
    model.cpu()
    if ckpt["quant"] is not None:
        from .compress import float_state_dict, quant_state

        state, quant = float_state_dict(model), quant_state(model)
    else:
        state, quant = model.state_dict(), None
    artifacts.save_checkpoint(out_model, state, ckpt["arch"], quant,
                              extra={"finetune": mode, "parent": str(parent_model)})
    macs = training_macs(history, len(data.train_y), forward_macs, attack.steps if attack else 0)
    metrics = _metrics(config, seed, device, "finetune", wall, parent, macs, attack is not None, finetune=mode,
                       settings=settings, history=history, attack=attack.describe() if attack else None,
                       precision=precision)
    artifacts.write_json(out_metrics, metrics)
    resume.unlink(missing_ok=True)
    return metrics


def run_evaluate(config: dict, data_path: str, experiment: str, train: str, compression: str, finetune: str,
                 seed: int, model_path: str, model_metrics: str, out_eval: str, threads: int = 1) -> dict:
    """Clean and PGD robust accuracy on the test set, plus the model's cost and full provenance.
    Fake-quantized models are also attacked through their float twin (transfer attack)."""
    from .cost import weight_storage_bytes

    device = _setup(config, seed, threads)
    upstream = artifacts.read_json(model_metrics)
    model, ckpt = artifacts.load_model(model_path)
    data = load_prepared(data_path)
    method, level = parse_compression(compression)
    attack = _attack(config, "eval")
    ev = config["evaluate"]
    float_twin = None  # a fake-quant model's float weights in a plain model
    if ckpt["quant"] is not None:
        from .compress import float_state_dict

        float_twin = build_model(ckpt["arch"])
        float_twin.load_state_dict(float_state_dict(model))
        float_twin.eval()
    transfer_source = float_twin if ev.get("transfer_attack_for_quantized", True) else None
    start = time.perf_counter()
    result = evaluate_model(model, data.test_x, data.test_y, attack, int(ev["batch_size"]), device,
                            seed + 2000, transfer_source, _precision(config, device, ckpt["quant"] is not None))
    wall = time.perf_counter() - start
    model.cpu()
    cost = _cost(model, data)
    inference = _inference_costs(config, model, float_twin, method, level, data, seed, threads)
    bits = int(level) if method in QUANTIZATION_METHODS else None
    record = {
        "experiment": experiment, "dataset": data.name, "arch": ckpt["arch"]["name"],
        "seed": seed, "train": train, "compression": compression, "method": method, "level": level,
        "finetune": finetune, **result,
        "params": cost["params"], "macs": cost["macs"],
        "checkpoint_bytes": Path(model_path).stat().st_size,
        "weight_bytes": weight_storage_bytes(model, bits),
        **inference, "device": str(device), "eval_wall_time_s": wall, "stages": upstream["stages"],
        "model_path": str(model_path), "peak_rss_mb": peak_rss_mb(),
        "provenance": artifacts.provenance(config, seed, device),
    }
    artifacts.write_json(out_eval, record)
    return record


def _latency_batch(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``batch_size`` test images (repeated when the test set is smaller)."""
    repeats = -(-batch_size // len(x))
    return torch.cat([x] * repeats)[:batch_size]


def _inference_costs(config: dict, model, float_twin, method: str, level, data, seed: int, threads: int) -> dict:
    """Measured inference cost on the CPU (whatever device evaluated the model): the median latency of
    a batch of test images, and for PTQ INT8 nodes the same for a real integer model (torch.ao, oneDNN)
    exported from the float twin and calibrated on the batches PTQ used, with its clean accuracy.
    A fake-quant model's latency is that of fp32 plus rounding: quantization only pays as integers."""
    from .cost import measure_latency
    from .evaluate import predict

    ev = config["evaluate"]
    batch_size, repeats = int(ev.get("latency_batch_size", 256)), int(ev.get("latency_repeats", 3))
    if repeats == 0:
        return {"latency_ms": None, "latency_batch": batch_size, "latency_threads": threads, "int8": None}
    cpu = torch.device("cpu")
    example = _latency_batch(data.test_x, batch_size)
    fake_quant = float_twin is not None
    if not fake_quant:  # float models run channels-last in this pipeline (runtime.place_model)
        place_model(model, cpu)
        example = example.contiguous(memory_format=torch.channels_last)
    result = {"latency_ms": 1000 * measure_latency(model, example, repeats=repeats, warmup=1),
              "latency_batch": batch_size, "latency_threads": threads, "int8": None}
    wants_int8 = method == "ptq" and level == 8 and ev.get("int8_export", True)
    if wants_int8 and not all(torch.isfinite(t).all() for t in float_twin.state_dict().values()
                              if t.is_floating_point()):
        # an integer model needs finite ranges; a diverged model has none (its accuracy is chance anyway)
        result["int8_skipped"] = "the model's float weights are not finite (training diverged)"
        log.warning("no real INT8 model: %s", result["int8_skipped"])
    elif wants_int8:
        from .int8_export import export_int8

        int8_model = export_int8(float_twin, _calibration(config, data, seed))
        eval_batch = int(ev["batch_size"])
        int8_pred = predict(int8_model, data.test_x, eval_batch, cpu)
        fake_pred = predict(model, data.test_x, eval_batch, cpu)
        result["int8"] = {
            "clean_acc": (int8_pred == data.test_y).float().mean().item(),
            "fake_quant_clean_acc": (fake_pred == data.test_y).float().mean().item(),
            "agreement": (int8_pred == fake_pred).float().mean().item(),
            "latency_ms": 1000 * measure_latency(int8_model, _latency_batch(data.test_x, batch_size),
                                                 repeats=repeats, warmup=1),
            "model_bytes": _serialized_bytes(int8_model),
        }
        log.info("real INT8 model: %s", result["int8"])
    log.info("inference latency, batch %d, %d thread(s): %.1f ms", batch_size, threads, result["latency_ms"])
    return result


def _serialized_bytes(model) -> int:
    """Bytes of the model's state_dict as torch.save writes it (int8 weights are stored as int8)."""
    import io

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def run_aggregate(eval_paths: list[str], out_csv: str, tables_dir: str, prune_sparsity: float,
                  ptq_bits: int) -> None:
    """all_metrics.csv and the paper's tables (CSV, Markdown, LaTeX) from the per-model eval.json files."""
    from .report import collect_metrics, write_metrics_csv, write_tables

    df = collect_metrics(eval_paths)
    write_metrics_csv(df, out_csv)
    write_tables(df, tables_dir, prune_sparsity, ptq_bits)


def run_plot(metrics_csv: str, figures_dir: str, figures: list[str]) -> None:
    """The named figures (PNG and PDF) from all_metrics.csv."""
    import pandas as pd

    from .report import plot_figures

    plot_figures(pd.read_csv(metrics_csv), figures_dir, figures)


# Figure 2's models: the workflow's input names, and the three pairs (rows) with the paper's labels.
FIGURE2_MODELS = ("f_st", "f_rb", "T_st_f_st_q", "T_ad_f_st_q", "T_st_f_st_p", "T_ad_f_st_p")
FIGURE2_PAIRS = ((("f_st", "f_st"), ("f_rb", "f_rb")),
                 (("T_st_f_st_q", "T_st(f_st^q)"), ("T_ad_f_st_q", "T_ad(f_st^q)")),
                 (("T_st_f_st_p", "T_st(f_st^p)"), ("T_ad_f_st_p", "T_ad(f_st^p)")))


def run_figure2(config: dict, data_path: str, model_paths: dict[str, str], seed: int, out_png: str,
                out_pdf: str, out_embeddings: str, threads: int = 1) -> None:
    """Figure 2: t-SNE of the inputs and of layers 6-8, clean and PGD-attacked, for test images of one
    class, for three model pairs; the embeddings are also written as CSV."""
    from .features import figure2_embeddings, plot_figure2

    device = _setup(config, seed, threads)
    data = load_prepared(data_path)
    settings = config["report"]["figure2"]
    label = int(settings["class_index"])
    chosen = (data.test_y == label).nonzero().flatten()[: int(settings["n_images"])]
    if len(chosen) < 2:
        raise ValueError(f"config key report.figure2.class_index: the test set has {len(chosen)} images of "
                         f"class {label}; t-SNE needs several")
    models = {}
    for name in FIGURE2_MODELS:
        model, _ = artifacts.load_model(model_paths[name])
        models[name] = model.to(device).eval()
    pairs = [(label_a, models[a], label_b, models[b]) for (a, label_a), (b, label_b) in FIGURE2_PAIRS]
    attack_cfg = dict(config["attack"]["eval"], eps_space=config["attack"].get("eps_space", "pixel"))
    log.info("figure 2: %d test images of class %d, %s", len(chosen), label, attack_cfg)
    df = figure2_embeddings(pairs, data.test_x[chosen], data.test_y[chosen], attack_cfg, seed,
                            float(settings.get("perplexity", 30)))
    with artifacts.atomic_path(out_embeddings) as tmp:
        df.to_csv(tmp, index=False)
    plot_figure2(df, out_png, out_pdf)
