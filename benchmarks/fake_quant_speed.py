"""How much does fake quantization slow an adversarial training step? CNN8, one PGD adversarial
training step (the attack in eval mode, then one SGD step in train mode), measured side by side in
one run, rounds interleaved: the dense fp32 model, our fake-quant models (quantize.py: torch's fused
fake-quantize kernels) and, as the baseline, NNI 3.0's PtqQuantizer (per-tensor, inputs and outputs of every layer). Also counts the
``torch.cuda.empty_cache()`` calls each step makes (NNI's ModuleWrapper calls it after every wrapped
layer's forward: a device sync per layer on a GPU).

    .venv/bin/python benchmarks/fake_quant_speed.py [--threads 1] [--rounds 5] [--batch 128] [--pgd-steps 2]

Also times, on one activation of CNN8's first layer at batch 256 (256x32x28x28), torch's fused
per-tensor fake-quantize kernel against ours for the CPU (quantize.FakeQuantizePerTensorCPU) and a ReLU.
Target: a fake-quant adversarial training step <= 1.5x the dense step (NNI: about 4x).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import statistics
import sys
import time

TARGET = 1.5


def nni_ptq(model, bits, calibration):
    """NNI 3.0's post-training fake quantization (PtqQuantizer), the baseline."""
    import nni
    import torch
    from nni.compression.quantization import PtqQuantizer
    from nni.compression.utils import TorchEvaluator

    work = copy.deepcopy(model).eval()
    schemes = {"weight": "symmetric", "_input_": "affine", "_output_": "affine"}
    config = [{"op_types": ["Conv2d", "Linear"], "target_names": list(schemes), "quant_dtype": f"int{bits}",
               "target_settings": {t: {"quant_dtype": f"int{bits}", "quant_scheme": s} for t, s in schemes.items()}}]

    def calibrate(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None):
        with torch.no_grad():
            for batch in calibration:
                model(batch)

    evaluator = TorchEvaluator(calibrate, nni.trace(torch.optim.SGD)(work.parameters(), lr=0.0),
                               training_step=lambda batch, model: None, evaluating_func=lambda model: None)
    PtqQuantizer(work, config, evaluator).compress(max_steps=len(calibration), max_epochs=None)
    def detach_weight(module, inputs, output):  # the fake-quantized weight buffer keeps autograd history
        module.weight = module.weight.detach()

    for m in work.modules():
        if hasattr(m, "_nni_wrapper"):
            m.register_forward_hook(detach_weight)
    return work.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--pgd-steps", type=int, default=2, help="the default config trains with PGD-2")
    parser.add_argument("--no-nni", action="store_true", help="skip the NNI baseline")
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from advfine.core.attacks.pgd import PGDAttack
    from advfine.core.attacks.threat import ThreatModel
    from advfine.core.models import build_model, default_arch
    from advfine.core.quantize import prepare_qat, quantize_ptq
    from advfine.core.runtime import place_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    dense = build_model(default_arch("cnn8", 1, 10, 28, [0.5], [0.5])).eval()
    calibration = [torch.rand(64, 1, 28, 28) for _ in range(4)]
    models = {"dense fp32 (baseline)": copy.deepcopy(dense),
              "fake-quant PTQ INT8 (ours)": quantize_ptq(dense, 8, calibration),
              "fake-quant PTQ INT4 (ours)": quantize_ptq(dense, 4, calibration),
              "fake-quant QAT INT8 (ours)": prepare_qat(dense, 8, calibration)}
    if not args.no_nni:
        logging.disable(logging.WARNING)
        with contextlib.redirect_stdout(sys.stderr):
            models["fake-quant PTQ INT8 (NNI 3.0, before)"] = nni_ptq(dense, 8, calibration)
        logging.disable(logging.NOTSET)
    attack = PGDAttack(ThreatModel("linf", 0.1), step_size=0.06, steps=args.pgd_steps, random_start=True)
    models = {name: place_model(m, cpu) for name, m in models.items()}  # channels-last, as train_model runs them
    x = torch.rand(args.batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for name, m in models.items()}
    empty_cache_calls = {name: 0 for name in models}
    current = [None]
    real_empty_cache = torch.cuda.empty_cache

    def counting_empty_cache():
        empty_cache_calls[current[0]] += 1
        real_empty_cache()

    torch.cuda.empty_cache = counting_empty_cache

    def step(name):
        model, opt = models[name], optimizers[name]
        model.eval()
        x_adv = attack(model, x, y, generator=torch.Generator().manual_seed(0))
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(x_adv), y).backward()
        opt.step()

    times = {name: [] for name in models}
    try:
        for name in models:  # warm-up
            current[0] = name
            step(name)
        empty_cache_calls = {name: 0 for name in models}
        for _ in range(args.rounds):  # interleaved: machine noise hits every model alike
            for name in models:
                current[0] = name
                start = time.perf_counter()
                step(name)
                times[name].append(time.perf_counter() - start)
    finally:
        torch.cuda.empty_cache = real_empty_cache
    median = {name: statistics.median(t) for name, t in times.items()}
    base = median["dense fp32 (baseline)"]
    kernels = kernel_times(args.rounds)
    print(f"CNN8, one PGD-{args.pgd_steps} adversarial training step, batch {args.batch}, {args.threads} thread(s), "
          f"median of {args.rounds} interleaved rounds\n")
    print("| model | step (s) | ratio to dense | empty_cache calls per step | target <= 1.5x met |")
    print("|---|---|---|---|---|")
    for name, seconds in median.items():
        ratio = seconds / base
        met = "" if name.startswith("dense") else ("yes" if ratio <= TARGET else "no")
        print(f"| {name} | {seconds:.3f} | {ratio:.2f}x | {empty_cache_calls[name] / args.rounds:g} | {met} |")
    print("\nOne 256x32x28x28 activation, INT8, median of interleaved rounds (CPU)\n")
    print("| kernel | ms |")
    print("|---|---|")
    for name, seconds in kernels.items():
        print(f"| {name} | {1000 * seconds:.1f} |")


def kernel_times(rounds: int) -> dict[str, float]:
    import torch

    from advfine.core.quantize import FakeQuantizePerTensorCPU

    x = torch.randn(256, 32, 28, 28).contiguous(memory_format=torch.channels_last)
    kernels = {"torch.fake_quantize_per_tensor_affine (fused)":
               lambda: torch.fake_quantize_per_tensor_affine(x, 0.02, 10, 0, 255),
               "FakeQuantizePerTensorCPU (ours)": lambda: FakeQuantizePerTensorCPU.apply(x, 0.02, 10, 0, 255),
               "ReLU (reference)": lambda: torch.relu(x)}
    times = {name: [] for name in kernels}
    with torch.no_grad():
        for _ in range(rounds):
            for name, kernel in kernels.items():
                start = time.perf_counter()
                kernel()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


if __name__ == "__main__":
    main()
