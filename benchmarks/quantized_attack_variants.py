"""Which stronger attack breaks what our suite left standing on a node? Per node of a results tree: the
samples our evaluation counts robust (``samples.csv``), attacked by variants of our APGD and, with ``--aa``,
by the official AutoAttack's APGD-CE + APGD-T (``pyautoattack``, standard settings); per variant the samples
it broke, those AutoAttack broke and it did not, and its seconds. This is how the default config's
escalation steps were chosen (docs/robustness.md).

    .venv/bin/python benchmarks/quantized_attack_variants.py RUN_DIR [--nodes SUBSTRING ...] [--n-images 200]
        [--variants ce:100:5 apgd_t:20:1:9 dlr:100:1 ...] [--aa] [--seed 0]

A variant is ``loss:steps:restarts[:target_classes]``: ``ce`` (APGD-CE), ``dlr`` (untargeted APGD-DLR),
``apgd_t`` (APGD-T over that many top wrong classes), ``aa`` (APGD-CE then APGD-T, as AutoAttack runs them).
Each variant attacks the standing samples afresh (not in cascade with the others), from random starts drawn
with ``--seed``; a sample counts as broken by the strict rule (``advfine.core.decision.correct``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from advfine.core.attacks.apgd import apgd, top_k_targets
from advfine.core.decision import correct
# a sibling script (run as a script, its folder is on the path; the tests put it there)
from autoattack_agreement import evaluated_nodes, judge, load_node, node_label, run_autoattack


def parse_variant(text: str) -> tuple[str, int, int, int]:
    parts = text.split(":")
    if parts[0] not in ("ce", "dlr", "apgd_t", "aa") or not 3 <= len(parts) <= 4:
        raise SystemExit(f"variant {text!r}: expected ce|dlr|apgd_t|aa:STEPS:RESTARTS[:TARGET_CLASSES]")
    return parts[0], int(parts[1]), int(parts[2]), int(parts[3]) if len(parts) == 4 else 9


def broken_by_variant(model, x, y, threat, variant: str, seed: int) -> torch.Tensor:
    """Per sample: broken by the variant (bool)."""
    kind, steps, restarts, targets = parse_variant(variant)
    runs = {"ce": [("ce", None)], "dlr": [("dlr", None)],
            "apgd_t": [("dlr-targeted", k) for k in range(2, targets + 2)],
            "aa": [("ce", None)] + [("dlr-targeted", k) for k in range(2, targets + 2)]}[kind]
    generator = torch.Generator().manual_seed(seed)
    broken = torch.zeros(len(y), dtype=torch.bool)
    for _ in range(restarts):
        noise = torch.rand(x.shape, generator=generator)
        for loss, k in runs:
            idx = (~broken).nonzero().flatten()
            if len(idx) == 0:
                return broken
            with torch.no_grad():
                target = None if k is None else top_k_targets(model(x[idx]), k)
            x_adv, _ = apgd(model, x[idx], y[idx], threat, steps, loss, target, start_noise=noise[idx])
            with torch.no_grad():
                fooled = ~correct(model(x_adv), y[idx]) & threat.contains(x_adv, x[idx])
            broken[idx[fooled]] = True
    return broken


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--nodes", nargs="+", default=())
    parser.add_argument("--n-images", type=int, default=200)
    parser.add_argument("--variants", nargs="+", default=["ce:100:5", "apgd_t:20:1:9", "dlr:100:1"])
    parser.add_argument("--aa", action="store_true", help="also AutoAttack's APGD-CE + APGD-T")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    for variant in args.variants:
        parse_variant(variant)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    paths = evaluated_nodes(args.run_dir, None, args.nodes)
    if not paths:
        print(f"no eval.json under {args.run_dir}/results", file=sys.stderr)
        return 2
    for path in paths:
        inputs = load_node(args.run_dir, path, args.n_images)
        standing = inputs.ours_robust.nonzero().flatten()
        x, y, model = inputs.x[standing], inputs.y[standing], inputs.model.eval()
        line = f"{node_label(inputs.node)}: {len(standing)} of {len(inputs.y)} standing"
        if len(standing) == 0:  # nothing left to attack (AutoAttack refuses an empty batch)
            print(line + " | nothing to attack", flush=True)
            continue
        aa_broken = None
        if args.aa:
            start = time.perf_counter()
            torch.manual_seed(args.seed)
            x_adv, y_adv = run_autoattack(model, x, y, inputs.threat, device, args.seed, "standard", 250,
                                          ("apgd-ce", "apgd-t"))
            aa_broken = ~judge(model, x, y, x_adv, y_adv, inputs.threat, device)["robust"]
            line += f" | AutoAttack APGD: {int(aa_broken.sum())} ({time.perf_counter() - start:.0f} s)"
        for variant in args.variants:
            start = time.perf_counter()
            broken = broken_by_variant(model, x, y, inputs.threat, variant, args.seed)
            line += f" | {variant}: {int(broken.sum())}"
            if aa_broken is not None:
                line += f", AutoAttack only {int((aa_broken & ~broken).sum())}"
            line += f" ({time.perf_counter() - start:.0f} s)"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
