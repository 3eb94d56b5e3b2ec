"""Are compressed CNN8s really faster? Inference latency (batch 256, CPU) of the dense fp32 model,
the 80 %-pruned model (filters physically removed), the fake-quant INT8 model and the real INT8 export
(torch.ao, oneDNN), measured side by side in one run, rounds interleaved; ratios against dense fp32.

    .venv/bin/python benchmarks/compressed_speed.py [--threads 2] [--rounds 7]

Every model runs as the pipeline runs it (stage deployment): float models channels-last
(runtime.place_model), the fake-quant model as quantize_ptq returns it, the INT8 model as export_int8 returns
it; all on the same example batch. The baseline is dense fp32 channels-last; dense fp32 in the
default contiguous layout is shown for reference. Targets: pruned 80 % >= 3x faster than
dense, real INT8 >= 4x. Weights are random (He init): latency does not depend on their values;
accuracy is tested in tests/test_int8_export.py.

Two things move the numbers between runs. Another process busy on a core makes every multi-threaded
op wait for the scheduler (latencies in multiples of 4 ms): compare runs on an idle machine, or with
--threads 1. And dense fp32 writes 25 MB activations: when the allocator hands them fresh pages,
page faults add up to ~20 ms (measured: 44 ms without page faults, 65 ms with, 2 threads).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import copy
import statistics
import sys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()

    import torch

    from advfine.core.prune import prune_filters_l1
    from advfine.core.quantize import quantize_ptq
    from advfine.core.cost import measure_latency
    from advfine.core.int8_export import export_int8
    from advfine.core.models import build_model, default_arch
    from advfine.core.runtime import cpu_flags, place_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    arch = default_arch("cnn8", 1, 10, 28, [0.5], [0.5])
    dense = build_model(arch).eval()
    calibration = [torch.rand(64, 1, 28, 28) for _ in range(4)]
    logging.disable(logging.WARNING)  # NNI logs its speed-up warnings to stdout: not results
    with contextlib.redirect_stdout(sys.stderr):  # and prints its progress
        pruned, _ = prune_filters_l1(dense, arch, 0.8, calibration[0][:2])
        fake_quant = quantize_ptq(dense, 8, calibration)
    logging.disable(logging.NOTSET)
    int8 = {engine: export_int8(fake_quant, backend=engine) for engine in ("x86", "qnnpack")
            if engine in torch.backends.quantized.supported_engines}
    int8["oneDNN"] = export_int8(fake_quant)  # the pipeline's choice, exported last (sets the engine)
    cpu = torch.device("cpu")
    baseline = "dense fp32, channels-last (baseline)"
    models = {baseline: place_model(copy.deepcopy(dense), cpu).eval(),
              "dense fp32, contiguous (not how the pipeline runs it)": dense,
              "pruned 80 % fp32": place_model(pruned, cpu).eval(),
              "fake-quant INT8 (torch fused kernels)": fake_quant,
              "real INT8 (torch.ao, oneDNN)": int8["oneDNN"],
              **{f"real INT8 (torch.ao, {engine} engine, for comparison)": model
                 for engine, model in int8.items() if engine != "oneDNN"}}
    example = torch.rand(args.batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    times = {name: [] for name in models}
    for _ in range(args.rounds):  # interleaved: machine noise hits every model alike
        for name, model in models.items():
            times[name].append(measure_latency(model, example, repeats=3, warmup=1))
    median = {name: statistics.median(t) for name, t in times.items()}
    targets = {"pruned 80 % fp32": 3.0, "real INT8 (torch.ao, oneDNN)": 4.0}
    print(f"CNN8 inference, batch {args.batch}, {args.threads} thread(s), median of {args.rounds} rounds; "
          f"CPU int8 dot-product instructions (VNNI): {'yes' if cpu_flags() & {'avx512_vnni', 'avx_vnni'} else 'no'}\n")
    print("| model | latency (ms) | speed-up vs dense fp32 | target | met |")
    print("|---|---|---|---|---|")
    for name, seconds in median.items():
        ratio = median[baseline] / seconds
        target = targets.get(name)
        met = "" if target is None else ("yes" if ratio >= target else "no")
        print(f"| {name} | {seconds * 1000:.1f} | {ratio:.2f}x | {'' if target is None else f'>= {target:g}x'} | {met} |")


if __name__ == "__main__":
    main()
