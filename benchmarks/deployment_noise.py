"""Do models of one architecture time alike? The deployment stage's method (advfine.core.cost.time_interleaved:
fixed torch threads, warm-up, rounds that each time every model once, the median over rounds) on CNN8s as
the pipeline runs them: three 80 %-pruned models and two dense ones, each with its own random weights
(a node's fine-tuning variants share their architecture, not their weights). Latency does not depend on
the weights' values, so each architecture's models should time alike: target, the slowest model's
median within 10 % of the fastest one's.

    .venv/bin/python benchmarks/deployment_noise.py [--threads 1] [--rounds 20] [--batch 256]

Under the old method (each model timed inside its own evaluation job, beside other jobs) two 80 %-pruned
CNN8s of one run timed 10.0 and 28.7 ms. The interleaving keeps the models comparable when the machine's
speed drifts; where other processes take the cores in bursts, a model's passes split between free and
shared cores and the median can land on either: the minimum over rounds (the pass that had the core to
itself) is shown beside it.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import sys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()

    import torch

    from advfine.core.cost import latency_stats, time_interleaved
    from advfine.core.models import build_model, default_arch
    from advfine.core.prune import prune_filters_l1
    from advfine.core.runtime import place_model

    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    arch = default_arch("cnn8", 1, 10, 28, [0.5], [0.5])
    example = torch.rand(args.batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    models = {}
    logging.disable(logging.WARNING)  # NNI logs its speed-up warnings to stdout: not results
    for seed in range(3):
        torch.manual_seed(seed)
        dense = build_model(arch).eval()
        with contextlib.redirect_stdout(sys.stderr):  # NNI prints its progress
            pruned, _ = prune_filters_l1(dense, arch, 0.8, example[:2].contiguous())
        models[f"pruned 80 % #{seed + 1}"] = (place_model(pruned, cpu).eval(), example)
        if seed < 2:
            models[f"dense #{seed + 1}"] = (place_model(copy.deepcopy(dense), cpu).eval(), example)
    logging.disable(logging.NOTSET)
    times = time_interleaved(models, args.rounds, args.warmup)
    stats = {name: latency_stats(seconds, args.batch) for name, seconds in times.items()}
    print(f"CNN8 inference, batch {args.batch}, {args.threads} thread(s), median of {args.rounds} interleaved "
          f"rounds, {args.warmup} warm-up pass(es) before each timed one\n")
    print("| model | latency (ms) | IQR (ms) | min-max (ms) | throughput (images/s) |")
    print("|---|---|---|---|---|")
    for name, s in stats.items():
        print(f"| {name} | {s['latency_ms']:.2f} | {s['latency_iqr_ms']:.2f} | {s['latency_min_ms']:.2f}-"
              f"{s['latency_max_ms']:.2f} | {s['throughput_ips']:.0f} |")
    print("\n| architecture | models | statistic | slowest / fastest | target | met |")
    print("|---|---|---|---|---|---|")
    for arch_name in ("pruned 80 %", "dense"):
        for key, statistic in (("latency_ms", "median"), ("latency_min_ms", "minimum")):
            values = [s[key] for name, s in stats.items() if name.startswith(arch_name)]
            spread = max(values) / min(values) - 1
            met = "yes" if spread <= 0.10 else "no"
            print(f"| {arch_name} | {len(values)} | {statistic} | +{100 * spread:.1f} % | <= 10 % | {met} |")


if __name__ == "__main__":
    main()
