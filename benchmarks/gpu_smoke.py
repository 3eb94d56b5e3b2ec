"""GPU smoke benchmark: the first thing to run on a machine with CUDA. In at most 5 minutes it runs a
reduced paper Fashion-MNIST path -- f_rb (PGD adversarial training) for one epoch, PTQ INT8,
adversarial fine-tuning, evaluation with the attack suite -- and prints images/s of the dense and the
fake-quant adversarial training steps, peak GPU memory, and whether bf16 AMP and the GPU pool worked.
Every line is a check (PASS/FAIL); the exit status is 1 if any failed. Without CUDA it says so and
exits 0 (``--cpu`` runs the same checks on the CPU, smaller, to test this script).

    .venv/bin/python benchmarks/gpu_smoke.py [--data-root data] [--train-images 20000] [--budget-s 300]

Data: Fashion-MNIST from ``{data-root}/FashionMNIST/raw`` (the four .gz files, as torchvision lays them
out); without them, the digits shipped with scikit-learn (upsampled to 28x28), and it says which.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from advfine.core.attacks.pgd import PGDAttack
from advfine.core.attacks.threat import ThreatModel
from advfine.core.datasets import load_dataset
from advfine.core.evaluate import Suite, evaluate_model
from advfine.core.models import build_model, default_arch
from advfine.core.quantize import calibration_batches, float_twin, quantize_ptq
from advfine.core.schedule import TrainSchedule
from advfine.core.train import train_model
from advfine.pipeline.config import section_with_defaults
from advfine.pipeline.gpu_pool import job_device

CHECKS: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "", timing_only: bool = False) -> None:
    """One check. ``timing_only``: a speed check, reported as INFO where it proves nothing (--cpu on a
    shared CPU: the GPU claims are what it is for)."""
    if timing_only:
        print(f"INFO  {name}{': ' + detail if detail else ''} ({'met' if ok else 'not met'})", flush=True)
        return
    CHECKS.append((name, bool(ok), detail))
    print(f"{'PASS' if ok else 'FAIL'}  {name}{': ' + detail if detail else ''}", flush=True)


def load_data(data_root: str, train_images: int, test_images: int):
    raw = Path(data_root) / "FashionMNIST" / "raw"
    name = "fashion_mnist" if raw.is_dir() and len(list(raw.glob("*.gz"))) >= 4 else "digits"
    cfg = section_with_defaults("data", {"name": name, "data_root": data_root,
                                         "train_subset": train_images, "test_subset": test_images})
    if name == "digits":
        cfg["train_subset"] = cfg["test_subset"] = None  # 1,347 / 450 images: all of them
    return load_dataset(cfg)


def schedule(epochs: int, lr: float, momentum: float) -> TrainSchedule:
    return TrainSchedule.from_config(section_with_defaults(
        "train", {"epochs": epochs, "batch_size": 128, "lr": lr, "momentum": momentum, "lr_drop_epoch": None,
                  "lr_after_drop": lr, "eps_warmup_epochs": 0}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--train-images", type=int, default=20000)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--budget-s", type=float, default=300.0)
    parser.add_argument("--cpu", action="store_true", help="run the checks on the CPU (small), to test this script")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.cpu:
        print("no CUDA device here: nothing to check (run this on a GPU machine; --cpu tests the script)")
        return
    if args.cpu:
        args.train_images, args.test_images = min(args.train_images, 512), min(args.test_images, 128)
    start = time.perf_counter()

    # the GPU pool: a job with device auto takes a free GPU and holds it (a lock file) for its block
    with tempfile.TemporaryDirectory() as locks, job_device("auto", lock_dir=Path(locks)) as device_name:
        device = torch.device("cpu" if args.cpu else device_name)
        if not args.cpu:
            check("GPU pool hands out a CUDA device", device.type == "cuda", device_name)
            torch.cuda.reset_peak_memory_stats(device)
        data = load_data(args.data_root, args.train_images, args.test_images)
        print(f"data: {data.name}, {len(data.train_y)} training and {len(data.test_y)} test images; device {device}")
        torch.manual_seed(0)
        model = build_model(default_arch("cnn8", 1, 10, 28, data.mean, data.std))
        attack = PGDAttack(ThreatModel("linf", 0.1), step_size=0.01, steps=20 if not args.cpu else 2,
                           random_start=True)
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"

        t0 = time.perf_counter()
        history = train_model(model, data.train_x, data.train_y, schedule(1, 0.1, 0.0), attack, 0, device,
                              desc="f_rb, 1 epoch", precision=precision)
        dense_s = time.perf_counter() - t0
        dense_ips = len(data.train_y) / dense_s
        check("f_rb trains to a finite loss", all(torch.isfinite(torch.tensor(h["loss"])) for h in history),
              f"loss {history[-1]['loss']:.3f}, {dense_ips:.0f} images/s (dense PGD-{attack.steps} training, {precision})")
        check("bf16 AMP used for the dense model" if device.type == "cuda" else "AMP not applicable on the CPU",
              device.type != "cuda" or precision == "bf16", precision)

        model.eval()
        quantized = quantize_ptq(model, 8, calibration_batches(data.train_x, 4, 64, 0))
        empty_cache_calls = []
        real_empty_cache = torch.cuda.empty_cache
        torch.cuda.empty_cache = lambda: empty_cache_calls.append(1)
        try:
            t0 = time.perf_counter()
            ft_history = train_model(quantized, data.train_x, data.train_y, schedule(1, 0.01, 0.9), attack, 1, device,
                                     desc="T_ad(f_rb^q) PTQ INT8, 1 epoch")
            quant_s = time.perf_counter() - t0
        finally:
            torch.cuda.empty_cache = real_empty_cache
        quant_ips = len(data.train_y) / quant_s
        check("PTQ INT8 adversarial fine-tuning stays finite",
              all(torch.isfinite(torch.tensor(h["loss"])) for h in ft_history),
              f"loss {ft_history[-1]['loss']:.3f}, {quant_ips:.0f} images/s (fake-quant, fp32)")
        check("fake-quant step <= 1.5x the dense step", quant_s <= 1.5 * dense_s * (1 if precision == "fp32" else 2),
              f"ratio {quant_s / dense_s:.2f} (dense ran {precision}; with bf16 the bound is 3x)", timing_only=args.cpu)
        check("no torch.cuda.empty_cache() on the hot path", not empty_cache_calls, f"{len(empty_cache_calls)} calls")

        quantized.eval()
        suite = Suite(pgd=attack, attacks=("pgd", "apgd_ce", "transfer", "square"), apgd_steps=20, square_queries=100)
        t0 = time.perf_counter()
        result = evaluate_model(quantized, data.test_x, data.test_y, suite, 500, device, 2000, float_twin(quantized))
        eval_s = time.perf_counter() - t0
        clean, robust = result["clean_acc"], result["robust_acc"]
        check("evaluation: robust <= clean, clean above chance", robust <= clean and clean > 0.15,
              f"clean {clean:.3f}, worst case {robust:.3f} ({eval_s:.1f} s, {len(data.test_y) / eval_s:.0f} images/s)")
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) / 2**20
            check("peak GPU memory under 4 GB", peak < 4096, f"{peak:.0f} MiB")
    total = time.perf_counter() - start
    check(f"whole run within {args.budget_s:.0f} s", total <= args.budget_s, f"{total:.1f} s", timing_only=args.cpu)
    failed = [name for name, ok, _ in CHECKS if not ok]
    print(f"\n{len(CHECKS) - len(failed)}/{len(CHECKS)} checks passed" + (f"; failed: {failed}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
