"""How fast is this machine for advfine's work? Two numbers that explain the default run's wall time:
the per-job start-up (``import torch`` and NNI in a fresh interpreter, as every Snakemake job pays)
and the throughput of one PGD-20 adversarial training step of the paper's CNN8 (fp32, batch 128).

    .venv/bin/python benchmarks/machine_speed.py [--threads 2]

Compare the throughput between machines (or days) before comparing workflow wall times.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time


def import_seconds(statement: str, repeats: int = 3) -> float:
    """Best of ``repeats`` fresh interpreters running ``statement``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-W", "ignore", "-c", statement], check=True)
        best = min(best, time.perf_counter() - start)
    return best


def pgd20_training_images_per_second(threads: int, batch: int = 128, steps: int = 4) -> float:
    import torch

    from advfine.core.attacks.pgd import PGDAttack
    from advfine.core.attacks.threat import ThreatModel
    from advfine.core.models import build_model, default_arch
    from advfine.core.train import training_step

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(default_arch("cnn8", 1, 10, 28, [0.5], [0.5]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    attack = PGDAttack(ThreatModel("linf", 0.1), step_size=0.01, steps=20)

    def step():
        training_step(model, optimizer, x, y, attack, None)

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"python startup:            {import_seconds('pass'):.2f} s")
    print(f"import torch:              {import_seconds('import torch'):.2f} s")
    print(f"import torch + NNI pruning: {import_seconds('import nni.compression.pruning'):.2f} s")
    rate = pgd20_training_images_per_second(args.threads)
    print(f"CNN8 PGD-20 adversarial training, fp32, batch 128, {args.threads} threads: {rate:.1f} images/s")


if __name__ == "__main__":
    main()
