"""What attacking the real INT8 model costs, and so what `evaluate.int8_robust_images` saves: the Square
attack (L-inf, the query cost of the deployed model's cascade) on the real INT8 export of a CNN8 and on
its fake-quant model, side by side in one run, on the CPU (the INT8 model's only device), and the
minutes it projects for one PTQ INT8 node of configs/paper-fmnist.yaml (10,000 test images, Square at
5,000 queries) on every image and on the subset the paper configs set.

    .venv/bin/python benchmarks/int8_attack_cost.py [--threads 2] [--queries 200] [--batch 256]

Every image is kept standing (a radius of 1e-6 fools nothing), so each one costs every query, as the
samples a robust model keeps do. Weights are random: the cost of a forward pass does not depend on them.
The projection counts only the samples still standing when Square starts (``--standing``, the share of
test images: a robust INT8 model keeps about 70 % of its clean-correct samples, the transfer attack
removes the rest); it leaves out the transfer attack (one PGD on the float twin, much cheaper).
"""
from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=200, help="Square queries timed (the cost is linear in them)")
    parser.add_argument("--batch", type=int, default=256, help="images attacked at once (config evaluate.batch_size)")
    parser.add_argument("--standing", type=float, default=0.7, help="share of test images Square attacks")
    args = parser.parse_args()

    from pathlib import Path

    import torch

    from advfine.core.attacks.square import square_linf
    from advfine.core.attacks.threat import ThreatModel
    from advfine.core.int8_export import export_int8
    from advfine.core.models import build_model, default_arch
    from advfine.core.quantize import quantize_ptq
    from advfine.core.runtime import make_generator
    from advfine.pipeline.config import resolve_config

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dense = build_model(default_arch("cnn8", 1, 10, 28, [0.2860], [0.3530])).eval()
    x = torch.rand(args.batch, 1, 28, 28)
    fake_quant = quantize_ptq(dense, 8, [x[:64]])
    models = {"real INT8": export_int8(fake_quant), "fake-quant INT8": fake_quant}
    threat = ThreatModel("linf", 1e-6)
    seconds = {}
    for name, model in models.items():
        with torch.no_grad():
            y = model(x).argmax(1)  # every image correct: a standing sample
        square_linf(model, x, y, threat, 5, generator=make_generator(0, torch.device("cpu")))  # warm-up
        start = time.perf_counter()
        _, fooled = square_linf(model, x, y, threat, args.queries, generator=make_generator(0, torch.device("cpu")))
        seconds[name] = time.perf_counter() - start
        assert not fooled.any(), "a sample fell: the timing would not cover every query"
    per_image_query = {name: s / (args.batch * args.queries) for name, s in seconds.items()}
    print(f"Square L-inf, {args.queries} queries on {args.batch} standing images, {args.threads} thread(s), CPU")
    for name, cost in per_image_query.items():
        print(f"  {name:16s} {seconds[name]:7.2f} s   {cost * 1e6:8.2f} us per image per query   "
              f"{cost / per_image_query['real INT8']:.2f}x the real INT8 model's")

    repo = Path(__file__).resolve().parents[1]
    paper = resolve_config([repo / "configs" / "paper-fmnist.yaml"], {}, repo)
    queries = paper["evaluate"]["square"]["queries"]
    subset = paper["evaluate"]["int8_robust_images"]
    test_images = 10_000
    for label, images in (("every test image", test_images), (f"int8_robust_images: {subset}", subset or test_images)):
        minutes = per_image_query["real INT8"] * images * args.standing * queries / 60
        print(f"paper-fmnist PTQ INT8 node, Square {queries} queries on the real INT8 model, {label}: "
              f"{minutes:.1f} min ({args.standing:.0%} of {images:,} images standing)")


if __name__ == "__main__":
    main()
