"""How many device syncs and ATen ops does fake quantization add to an adversarial training step? CNN8 on
random 28x28 images: the dense model, PTQ INT8, QAT INT8 (trained in train mode: its activation ranges
track), PTQ INT4 and INT1 (binary), each for one PGD adversarial training step
(``advfine.core.train.training_step``), one eval forward and one attack step (a PGD-1 call).

    .venv/bin/python benchmarks/sync_count.py [--threads 1] [--batch 32] [--pgd-steps 10] [--device auto]

Syncs are counted by ``advfine.core.syncs`` (a dispatch mode: ``.item()``, ``bool(t)``, ``nonzero``,
boolean indexing, torch ops that read values on the host), on the code path CUDA tensors take
(``quantize.emulate_cuda_path`` on the CPU); the ones inside fake-quant modules' forwards are also
counted apart. On a GPU (``--device cuda``, the default when there is one) the real syncs of the
training step are counted too, with ``torch.cuda.set_sync_debug_mode("warn")``. The training step's own
two (its loss's ``.item()`` and the count of correct predictions) are the loop's.
Target: fake quantization adds at most 2 syncs per training step.
"""
from __future__ import annotations

import argparse
import copy
from collections import Counter

TARGET = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--pgd-steps", type=int, default=10)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = parser.parse_args()

    import torch
    from torch.ao.quantization import FakeQuantizeBase

    from advfine.core import quantize, syncs
    from advfine.core.attacks.pgd import PGDAttack
    from advfine.core.attacks.threat import ThreatModel
    from advfine.core.binary import BinaryLayer
    from advfine.core.kept import KeptFromWeight
    from advfine.core.models import build_model, default_arch
    from advfine.core.runtime import place_model
    from advfine.core.train import training_step

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    torch.manual_seed(0)
    dense = build_model(default_arch("cnn8", 1, 10, 28, [0.5], [0.5])).eval()
    calibration = [torch.rand(args.batch, 1, 28, 28) for _ in range(2)]
    models = {"dense fp32": copy.deepcopy(dense),
              "PTQ INT8": quantize.quantize_ptq(dense, 8, calibration),
              "QAT INT8": quantize.prepare_qat(dense, 8, calibration),
              "PTQ INT4": quantize.quantize_ptq(dense, 4, calibration),
              "INT1 (binary)": quantize.quantize_ptq(dense, 1, calibration)}
    attack = PGDAttack(ThreatModel("linf", 0.1), step_size=0.025, steps=args.pgd_steps, random_start=True)
    one_step = PGDAttack(ThreatModel("linf", 0.1), step_size=0.025, steps=1, random_start=True)
    x = torch.rand(args.batch, 1, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,), device=device)

    rows = {}
    for name, model in models.items():
        model = place_model(model, device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        watched = [m for m in model.modules() if isinstance(m, (FakeQuantizeBase, BinaryLayer))]
        kept = [k for m in model.modules() for k in vars(m).values() if isinstance(k, KeptFromWeight)]
        generator = torch.Generator(device=device).manual_seed(0)

        def train():
            training_step(model, optimizer, x, y, attack, generator)

        def forward():
            model.eval()
            with torch.no_grad():
                model(x)

        def attack_step():
            one_step(model, x, y, generator=generator)

        with quantize.emulate_cuda_path():
            train()  # warm-up: optimizer state, first calls
            reused = sum(k.reuses for k in kept)
            step = syncs.count(train, watched)
            reused = sum(k.reuses for k in kept) - reused
            forward()  # the weights changed: this one quantizes them, the next ones reuse them
            eval_forward = syncs.count(forward, watched)
            attack_step()
            attack_one = syncs.count(attack_step, watched)
        real = syncs.cuda_syncs(train) if device.type == "cuda" else None
        rows[name] = (step, reused, eval_forward, attack_one, real)

    where = "CUDA" if device.type == "cuda" else "the CPU, on the CUDA code path"
    print(f"CNN8, batch {args.batch}, PGD-{args.pgd_steps} adversarial training step, {args.threads} thread(s), "
          f"counted on {where}\n")
    head = ("| model | syncs per training step | from fake-quant | syncs per eval forward | syncs per attack step "
            "| ATen ops per training step | ATen ops per eval forward | ATen ops per attack step "
            "| quantized weights reused per step |")
    if device.type == "cuda":
        head += " CUDA syncs per training step (sync debug mode) |"
    print(head)
    print("|---" * head.count(" |") + "|")
    for name, (step, reused, eval_forward, attack_one, real) in rows.items():
        line = (f"| {name} | {step.syncs} | {step.watched_syncs} | {eval_forward.syncs} | {attack_one.syncs} "
                f"| {step.ops} | {eval_forward.ops} | {attack_one.ops} | {reused} |")
        if real is not None:
            line += f" {real} |"
        print(line)
    worst = max(step.watched_syncs for step, *_ in rows.values())
    print(f"\nSyncs found: {dict(sum((step.sync_ops for step, *_ in rows.values()), start=Counter()))}. "
          f"The training step's own 2 are its loss's .item() and its count of correct predictions.")
    print(f"Fake quantization adds at most {worst} sync(s) per training step (target <= {TARGET}: "
          f"{'met' if worst <= TARGET else 'not met'}).")
    if device.type != "cuda":
        print("No GPU here: the counts stand for CUDA's (the same Python code dispatches the same ops); on the "
              "CPU itself per-tensor fake quantization reads its scale and zero point with .item(), which "
              "costs nothing there.")


if __name__ == "__main__":
    main()
