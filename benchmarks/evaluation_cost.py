"""What the stronger evaluation costs and finds: the same checkpoints of the default run evaluated with
the paper's PGD alone (what every evaluation ran before the attack suite: PGD, plus the transfer attack
for fake-quantized models), with the default config's light suite and its audit, and, on a subset of
the test set, with AutoAttack's standard suite (the paper configs'), side by side in one run.

    .venv/bin/python benchmarks/evaluation_cost.py [--threads 1] [--subset 100]

Needs the default experiment's checkpoints (``make run``). One model per node type (seed 0): dense f_st
and f_rb, the 80 %-pruned T_ad(f_st^p), the PTQ INT8 T_ad(f_rb^q) and the PTQ INT4 T_ad(f_st^q).
Times are seconds of the attacks only (no process start-up), one thread, the suites run one after the
other on each model; the robust accuracies are the same numbers the pipeline writes.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml

from advfine.core.audit import audit_evaluation
from advfine.core.data import load_prepared
from advfine.core.evaluate import Suite, evaluate_model, robustness_curve
from advfine.core.quantize import float_twin
from advfine.pipeline.checkpoints import load_model
from advfine.pipeline.config import validate_config
from advfine.pipeline.nodes import Node

REPO = Path(__file__).resolve().parents[1]

# (train, compression, fine-tuning) of each model, seed 0
NODES = {"dense f_st": ("st", "dense", "none"), "dense f_rb": ("rb", "dense", "none"),
         "T_ad(f_st^p) 80 %": ("st", "prune-0.8", "ad"),
         "T_ad(f_rb^q) PTQ INT8": ("rb", "ptq-int8", "ad"),
         "T_ad(f_st^q) PTQ INT4": ("st", "ptq-int4", "ad")}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--subset", type=int, default=100, help="test images for AutoAttack's standard suite")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    nodes = {name: Node(config["experiment"], config["data"]["name"], config["model"]["arch"], 0, *identity)
             for name, identity in NODES.items()}
    data = load_prepared(REPO / next(iter(nodes.values())).data)
    light = Suite.from_config(config["attack"], config["evaluate"])
    pgd_only = replace(light, attacks=("pgd", "transfer"))
    standard = Suite(pgd=light.pgd, attacks=("pgd", "apgd_ce", "apgd_t", "fab_t", "transfer", "square"))
    audit_settings = config["evaluate"]["audit"]
    x, y, cpu = data.test_x, data.test_y, torch.device("cpu")
    xs, ys = x[: args.subset], y[: args.subset]
    rows, totals = [], {"pgd": 0.0, "light": 0.0}
    for name, node in nodes.items():
        model, ckpt = load_model(REPO / node.model)
        twin = float_twin(model) if ckpt["quant"] is not None else None
        with contextlib.redirect_stderr(io.StringIO()):  # the attacks' progress bars are not results
            before, t_pgd = timed(lambda: evaluate_model(model, x, y, pgd_only, 256, cpu, 2000, twin))
            after, t_suite = timed(lambda: evaluate_model(model, x, y, light, 256, cpu, 2000, twin))
            audit, t_audit = timed(lambda: audit_evaluation(model, x, y, after, light, audit_settings, 256, cpu, 2000))
            curve, t_curve = timed(lambda: robustness_curve(model, x, y, after["per_sample"]["clean_ok"], light,
                                                            config["evaluate"]["curve_eps_fractions"], 256, cpu, 2000))
            small_light = evaluate_model(model, xs, ys, light, 256, cpu, 2000, twin)
            aa, t_aa = timed(lambda: evaluate_model(model, xs, ys, standard, 256, cpu, 2000, twin))
        totals["pgd"] += t_pgd
        totals["light"] += t_suite + t_audit + t_curve
        decisive = max((a for a in after["attacks"] if a != "pgd"), key=lambda a: after["attacks"][a]["broken"])
        rows.append((name, before, after, audit, t_pgd, t_suite, t_audit, t_curve, small_light, aa, t_aa,
                     decisive if after["attacks"][decisive]["broken"] else "none"))
    print(f"Test set: {len(y)} images; AutoAttack-standard columns on the first {len(ys)}.\n")
    print("| model | PGD only (before): robust % | light suite: worst case % | decisive attack | audit flags "
          f"| light suite, {len(ys)} images % | AutoAttack standard, {len(ys)} images % |")
    print("|---|---|---|---|---|---|---|")
    for name, before, after, audit, *_, small_light, aa, _t, decisive in rows:
        print(f"| {name} | {100 * before['robust_acc']:.2f} | {100 * after['robust_acc']:.2f} | {decisive} | "
              f"{', '.join(audit['flags']) or 'none'} | {100 * small_light['robust_acc']:.2f} | "
              f"{100 * aa['robust_acc']:.2f} |")
    print("\n| model | PGD only (s) | light suite (s) | audit (s) | curve (s) | light / PGD only "
          f"| AutoAttack standard, {len(ys)} images (s) |")
    print("|---|---|---|---|---|---|---|")
    for name, _b, _a, _au, t_pgd, t_suite, t_audit, t_curve, _s, _aa, t_aa, _d in rows:
        print(f"| {name} | {t_pgd:.1f} | {t_suite:.1f} | {t_audit:.1f} | {t_curve:.1f} | "
              f"{(t_suite + t_audit + t_curve) / t_pgd:.2f}x | {t_aa:.1f} |")
    print(f"\nTotal over these models: PGD only {totals['pgd']:.1f} s, light suite + audit + curve "
          f"{totals['light']:.1f} s ({totals['light'] / totals['pgd']:.2f}x).")


if __name__ == "__main__":
    main()
