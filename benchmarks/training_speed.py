"""Adversarial training speed, side by side in one run: advfine's training step against a naive
reference loop and a loop driven by torchattacks' PGD, in fp32 (and advfine's in bf16), with the
robust accuracy each reaches, the FLOPs of one step and the fraction of the machine's peak.

    .venv/bin/python benchmarks/training_speed.py [--threads 2] [--batch 128] [--pgd-steps 10]

Every loop adversarially fine-tunes the same standard-trained CNN8 (the paper's model) on the same
real digits (scikit-learn's, 28x28) for the same number of steps; steps are interleaved (step i of
every loop, then step i + 1), so machine noise hits all loops alike. Then each model faces the same
fixed evaluation (advfine's PGD, fp32, same random starts). The loops:

- naive reference: written the way the paper's code does it: a per-item DataLoader, fp32, the
  default memory format, the attack run with the model in train mode and ``loss.backward()``
  (which also computes weight gradients it throws away);
- torchattacks: ``torchattacks.PGD`` for the attack, batches sliced from one tensor, default format;
- advfine fp32 / bf16: ``advfine.core.train.training_step`` (channels-last, gradients to the input only,
  bf16 autocast for the second).

Also: the FLOPs of one step against the machine's measured matrix-product peak (fp32 and bf16), and
the cost of advfine's evaluation (misclassified samples not attacked) against attacking everything.

Targets: advfine fp32 >= 1.5x the naive reference and >= torchattacks; bf16 >= 3.5x the
naive reference with clean and robust accuracy within 1 point of fp32.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from advfine.core.data import iterate_batches
from advfine.core.decision import correct

EPS, STEP_SIZE_FRACTION = 0.1, 2.5  # step size = 2.5 * eps / steps (Madry et al.'s rule of thumb)


def naive_reference_loop(model, train_x, train_y, batch, eps, step_size, steps, seed):
    """Yields a step function per batch, the way the reference code trains (see the module doc)."""
    from torch.utils.data import DataLoader, TensorDataset

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = DataLoader(TensorDataset(train_x, train_y), batch_size=batch, shuffle=True,
                        generator=torch.Generator().manual_seed(seed), drop_last=True)
    for x, y in loader:
        def step(x=x, y=y):
            model.train()  # the reference code attacks in train mode
            delta = (torch.rand_like(x) * 2 - 1) * eps
            delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
            for _ in range(steps):
                loss = F.cross_entropy(model(x + delta), y)
                loss.backward()  # also fills the weights' .grad, thrown away below
                delta.data = (delta + step_size * delta.grad.sign()).clamp(-eps, eps)
                delta.data = (x + delta.data).clamp(0, 1) - x
                delta.grad.zero_()
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x + delta.detach()), y)
            loss.backward()
            optimizer.step()
        yield step


def torchattacks_loop(model, train_x, train_y, batch, eps, step_size, steps, seed):
    import torchattacks

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    attack = torchattacks.PGD(model, eps=eps, alpha=step_size, steps=steps, random_start=True)
    order = torch.Generator().manual_seed(seed)  # the same batches in both sliced loops
    for x, y in iterate_batches(train_x, train_y, batch, shuffle=True, generator=order):
        def step(x=x, y=y):
            x_adv = attack(x, y)  # torchattacks puts the model in eval mode for the attack
            model.train()
            optimizer.zero_grad()
            F.cross_entropy(model(x_adv), y).backward()
            optimizer.step()
        yield step


def advfine_loop(model, train_x, train_y, batch, eps, step_size, steps, seed, precision):
    from advfine.core.attacks.pgd import PGDAttack
    from advfine.core.attacks.threat import ThreatModel
    from advfine.core.runtime import place_model
    from advfine.core.train import training_step

    cpu = torch.device("cpu")
    place_model(model, cpu)
    train_x = train_x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    attack = PGDAttack(ThreatModel("linf", eps), step_size=step_size, steps=steps)
    generator = torch.Generator().manual_seed(seed + 1)
    order = torch.Generator().manual_seed(seed)  # the same batches in both sliced loops
    for x, y in iterate_batches(train_x, train_y, batch, shuffle=True, generator=order):
        def step(x=x, y=y):
            training_step(model, optimizer, x, y, attack, generator, precision)
        yield step


def counted_step_flops(model, x, y, steps) -> int:
    """FLOPs of one adversarial training step, counted by torch's FlopCounterMode (convolutions and
    matrix products, forward and backward; elementwise work is not counted): ``steps`` attack steps
    (forward, backward to the input only) plus one training step (forward, backward to the input of
    every layer and to the weights). Counted part by part with ``backward()``: FlopCounterMode's module
    hooks do not support ``autograd.grad``, which the attack itself uses."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    twin = copy.deepcopy(model).train()
    with FlopCounterMode(display=False) as counter:
        twin.requires_grad_(False)
        x_attack = x.clone().requires_grad_(True)
        F.cross_entropy(twin(x_attack), y).backward()
    attack_step = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        twin.requires_grad_(True)
        F.cross_entropy(twin(x), y).backward()
    return steps * attack_step + counter.get_total_flops()


def matmul_peak_gflops(dtype: torch.dtype, max_n: int = 2048, repeats: int = 5) -> tuple[float, int]:
    """Best-of-``repeats`` GFLOP/s of an n x n matrix product, the machine's practical peak, and n.
    n doubles from 256 until one product takes 0.2 s or n reaches ``max_n``: where a dtype is
    emulated (bf16 without AVX-512 BF16 runs at about 0.5 GFLOP/s here) a 2048 product takes 30 s."""
    n = 256
    while True:
        a, b = torch.rand(n, n, dtype=dtype), torch.rand(n, n, dtype=dtype)
        start = time.perf_counter()
        a @ b
        if n >= max_n or time.perf_counter() - start >= 0.2:
            break
        n *= 2
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9, n


def evaluation_cost(model, x, y, attack, seed: int) -> dict:
    """advfine's evaluation (only correctly classified samples attacked, each until it is fooled)
    against attacking every sample for every step, from the same per-sample random starts."""
    from dataclasses import replace

    from advfine.core.evaluate import Suite, evaluate_model, start_noise_for

    cpu = torch.device("cpu")
    start = time.perf_counter()
    ours = evaluate_model(model, x, y, Suite(pgd=attack, attacks=("pgd",)), 256, cpu, seed=seed)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    noise = start_noise_for(x, torch.Generator().manual_seed(seed))
    plain = replace(attack, stop_on_success=False)
    robust = []
    for i in range(0, len(y), 256):
        xb, yb = x[i:i + 256], y[i:i + 256]
        x_adv = plain(model, xb, yb, start_noise=noise[i:i + 256])
        with torch.no_grad():
            robust.append(correct(model(xb), yb) & correct(model(x_adv), yb))
    every_s = time.perf_counter() - start
    return {"clean": ours["clean_acc"], "robust": ours["robust_acc"],
            "robust_every": torch.cat(robust).float().mean().item(), "seconds": ours_s, "seconds_every": every_s}


def machine_line() -> str:
    import platform

    from advfine.core.runtime import cpu_flags, cpu_has_native_bf16, cpu_model

    flags = cpu_flags()
    model = cpu_model()
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16") if f in flags]
    return (f"{model}, {platform.machine()}, ISA: {' '.join(isa) or 'n/a'}; native bf16: "
            f"{'yes' if cpu_has_native_bf16() else 'no'}; torch {torch.__version__}, "
            f"capability {torch.backends.cpu.get_cpu_capability()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--pgd-steps", type=int, default=10)
    parser.add_argument("--train-images", type=int, default=1024, help="adversarial fine-tuning images")
    parser.add_argument("--test-images", type=int, default=None, help="evaluation images (default: all 450)")
    args = parser.parse_args()

    from advfine.core.attacks.pgd import PGDAttack
    from advfine.core.attacks.threat import ThreatModel
    from advfine.pipeline.config import section_with_defaults
    from advfine.core.datasets import load_dataset
    from advfine.core.evaluate import Suite, evaluate_model
    from advfine.core.models import build_model, default_arch
    from advfine.core.runtime import cpu_has_native_bf16
    from advfine.core.schedule import TrainSchedule
    from advfine.core.train import train_model

    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    data = load_dataset(section_with_defaults("data", {"name": "digits", "test_subset": args.test_images}))
    step_size = STEP_SIZE_FRACTION * EPS / args.pgd_steps
    torch.manual_seed(0)
    arch = default_arch("cnn8", 1, 10, 28, data.mean, data.std)
    standard = build_model(arch)
    with contextlib.redirect_stdout(sys.stderr):  # the epoch lines are progress, not results
        schedule = TrainSchedule.from_config(section_with_defaults(
            "train", {"epochs": 4, "batch_size": 32, "lr": 0.1, "momentum": 0.0, "lr_drop_epoch": 3,
                      "lr_after_drop": 0.01}))
        train_model(standard, data.train_x, data.train_y, schedule, None, 0, cpu)
    start_state = {k: v.clone() for k, v in standard.state_dict().items()}

    def fresh_model():
        model = build_model(arch)
        model.load_state_dict(start_state)
        return model

    train_x, train_y = data.train_x[:args.train_images], data.train_y[:args.train_images]
    common = (train_x, train_y, args.batch, EPS, step_size, args.pgd_steps, 0)
    models = {name: fresh_model() for name in ("naive reference", "torchattacks PGD", "advfine fp32",
                                               "advfine bf16")}
    loops = {"naive reference": naive_reference_loop(models["naive reference"], *common),
             "torchattacks PGD": torchattacks_loop(models["torchattacks PGD"], *common),
             "advfine fp32": advfine_loop(models["advfine fp32"], *common, precision="fp32"),
             "advfine bf16": advfine_loop(models["advfine bf16"], *common, precision="bf16")}
    times: dict[str, list[float]] = {name: [] for name in loops}
    for steps in zip(*loops.values()):  # interleaved: step i of every loop, then step i + 1
        for name, step in zip(loops, steps):
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    # the first step of each loop is a warm-up (allocations, kernel selection): not timed
    rate = {name: args.batch / statistics.median(t[1:]) for name, t in times.items()}

    evaluation = PGDAttack(ThreatModel("linf", EPS), step_size=0.025, steps=10)
    pgd_only = Suite(pgd=evaluation, attacks=("pgd",))
    accuracy = {name: evaluate_model(model.eval(), data.test_x, data.test_y, pgd_only, 256, cpu, seed=7)
                for name, model in models.items()}
    accuracy_bf16_eval = evaluate_model(models["advfine bf16"], data.test_x, data.test_y, pgd_only, 256, cpu,
                                        seed=7, precision="bf16")

    eval_costs = {"standard model (before fine-tuning)": evaluation_cost(fresh_model().eval(), data.test_x,
                                                                          data.test_y, evaluation, 7),
                  "advfine fp32 (adversarially fine-tuned)": evaluation_cost(models["advfine fp32"], data.test_x,
                                                                             data.test_y, evaluation, 7)}

    example_x = train_x[:args.batch].contiguous(memory_format=torch.channels_last)
    flops = counted_step_flops(models["advfine fp32"], example_x, train_y[:args.batch], args.pgd_steps)
    peak = {"fp32": matmul_peak_gflops(torch.float32), "bf16": matmul_peak_gflops(torch.bfloat16)}  # (GFLOP/s, n)

    n_test = len(data.test_y)
    naive = rate["naive reference"]
    print(f"CNN8 PGD-{args.pgd_steps} adversarial training step, batch {args.batch}, {args.threads} thread(s), "
          f"{len(times['naive reference'])} interleaved steps per loop (median of the last "
          f"{len(times['naive reference']) - 1}), {args.train_images} digits images, eps {EPS}")
    print(f"Machine: {machine_line()}\n")
    print("| loop | images/s | vs naive | GFLOP/s | clean acc (%) | robust acc (%) | target | met |")
    print("|---|---|---|---|---|---|---|---|")
    for name in loops:
        ratio = rate[name] / naive
        gflops = flops / args.batch * rate[name] / 1e9
        acc = accuracy[name]
        target_text, met = "", ""
        if name == "advfine fp32":
            target_text = ">= 1.5x naive and >= torchattacks"
            met = "yes" if ratio >= 1.5 and rate[name] >= rate["torchattacks PGD"] else "no"
        elif name == "advfine bf16":
            target_text = ">= 3.5x naive"
            met = "yes" if ratio >= 3.5 else "no"
        print(f"| {name} | {rate[name]:.1f} | {ratio:.2f}x | {gflops:.1f} | {100 * acc['clean_acc']:.2f} | "
              f"{100 * acc['robust_acc']:.2f} | {target_text} | {met} |")
    # one standard error of an accuracy p measured on n images: sqrt(p (1 - p) / n)
    p = accuracy["advfine fp32"]["robust_acc"]
    noise = 100 * math.sqrt(p * (1 - p) / n_test)
    fp32_acc, bf16_acc = accuracy["advfine fp32"], accuracy_bf16_eval
    d_clean = 100 * abs(fp32_acc["clean_acc"] - bf16_acc["clean_acc"])
    d_robust = 100 * abs(fp32_acc["robust_acc"] - bf16_acc["robust_acc"])
    print(f"\nAll four models are evaluated alike: advfine's PGD-10 (eps {EPS}, step 0.025, fp32, same random "
          f"starts) on the {n_test} test images; one standard error of a robust accuracy here is about "
          f"{noise:.1f} points. The bf16 model evaluated in bf16 (training and evaluation in bf16, as "
          f"`precision: bf16` runs): clean {100 * bf16_acc['clean_acc']:.2f} %, robust "
          f"{100 * bf16_acc['robust_acc']:.2f} %; vs fp32: {d_clean:.2f} / {d_robust:.2f} points "
          f"(target <= 1 point: {'met' if d_clean <= 1 and d_robust <= 1 else 'missed'}).")
    print(f"\nFLOPs of one step (FlopCounterMode, convolutions and matrix products, forward and backward): "
          f"{flops / 1e9:.2f} GFLOP = {flops / args.batch / 1e6:.1f} MFLOP per image.")
    print("\nPeak of this machine (n x n matrix product, best of 5, same threads):\n")
    print("| precision | n | peak GFLOP/s | advfine GFLOP/s | fraction of peak |")
    print("|---|---|---|---|---|")
    for precision in ("fp32", "bf16"):
        achieved = flops / args.batch * rate[f"advfine {precision}"] / 1e9
        gflops, n = peak[precision]
        print(f"| {precision} | {n} | {gflops:.1f} | {achieved:.1f} | {100 * achieved / gflops:.0f} % |")
    if not cpu_has_native_bf16():
        print("\nThis CPU has no AVX-512 BF16 or AMX: bf16 is emulated in software, so the bf16 'peak' is "
              "that of the emulation (oneDNN's bf16 convolutions emulate better than its matrix product), "
              "not a physical limit, and bf16 is slower than fp32. The bf16 target needs a CPU with bf16 "
              "units (or a GPU).")
    print("\nEvaluation cost (PGD-10, fp32): advfine attacks only correctly classified samples and stops on a "
          "sample at the first iterate that fools it; the alternative attacks every sample for all 10 steps "
          "(same random starts). Misclassified samples are non-robust either way, and a sample fooled at any "
          "iterate is non-robust, so advfine's robust accuracy is never higher (equal when no sample "
          "recovers by the last step; tests/test_core.py checks the skipping gives identical numbers).\n")
    print("| model | clean (%) | robust, advfine (%) | robust, attack everything (%) | advfine s | "
          "attack-everything s | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for name, c in eval_costs.items():
        print(f"| {name} | {100 * c['clean']:.2f} | {100 * c['robust']:.2f} | {100 * c['robust_every']:.2f} | "
              f"{c['seconds']:.1f} | {c['seconds_every']:.1f} | {c['seconds_every'] / c['seconds']:.2f}x |")

if __name__ == "__main__":
    main()
