"""What an experiment's evaluations found and cost, per node type (dense, pruned, PTQ/QAT INTb): the
mean PGD robust accuracy (the paper's metric) beside the mean worst case over the suite, the largest
drop, the points each later attack of the cascade added, the audit flags, the lowest fake-quant vs
real-INT8 agreement, and the evaluation seconds (per attack and in all); then what the escalation to
stronger attacks did per node type (the worst case before and after it, the nodes its audit still flags,
its share of the evaluation seconds). Reads ``eval.json`` files.

    .venv/bin/python benchmarks/evaluation_summary.py [results/digits-default]
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def node_type(record: dict) -> str:
    return {"dense": "dense", "prune": "pruned"}.get(record["method"], f"{record['method']} INT{record['level']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, nargs="?", default=REPO / "results" / "digits-default",
                        help="an experiment's results folder (default: the default experiment's)")
    root = parser.parse_args().root
    records = [json.loads(p.read_text()) | {"path": str(p.relative_to(root))} for p in sorted(root.rglob("eval.json"))]
    if not records:
        sys.exit(f"no eval.json under {root}: run the experiment first")
    by_type, attack_seconds = defaultdict(list), Counter()
    for r in records:
        by_type[node_type(r)].append(r)
        attack_seconds.update({name: a["wall_time_s"] for name, a in r["attacks"].items()})
    print(f"{len(records)} evaluations under {root}\n")
    print("| node type | n | diverged or collapsed | PGD (%) | worst case (%) | largest drop (points, node) | points added after PGD "
          "| audit flags | lowest INT8 agreement (%) | evaluation (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind, rs in sorted(by_type.items()):
        # a collapsed model (or one built on a collapsed model) is never averaged, like a diverged one
        ok = [r for r in rs if not r["diverged"] and not r.get("collapsed") and not r.get("collapsed_upstream")]
        if not ok:
            print(f"| {kind} | {len(rs)} | {len(rs)} | n/a | n/a | n/a | n/a | n/a | n/a | n/a |")
            continue
        added, flags = Counter(), Counter()
        for r in ok:
            order = r["attack_order"]
            for before, after in zip(order, order[1:]):
                added[after] += r["attacks"][before]["robust_acc_after"] - r["attacks"][after]["robust_acc_after"]
            flags.update(r["audit"]["flags"])
            assert r["robust_acc"] <= r["robust_acc_pgd"] + 1e-9, r["path"]  # the worst case never exceeds PGD
        worst = max(ok, key=lambda r: r["robust_acc_pgd"] - r["robust_acc"])
        agreement = [r["int8"]["agreement"] for r in ok if r.get("int8")]
        mean = lambda key: 100 * sum(r[key] for r in ok) / len(ok)  # noqa: E731
        print(f"| {kind} | {len(rs)} | {len(rs) - len(ok)} | {mean('robust_acc_pgd'):.1f} | {mean('robust_acc'):.1f} "
              f"| {100 * (worst['robust_acc_pgd'] - worst['robust_acc']):.1f} ({worst['path']}) "
              f"| {', '.join(f'{a} {100 * v / len(ok):.2f}' for a, v in added.items())} "
              f"| {', '.join(f'{f} {c}' for f, c in flags.items()) or 'none'} "
              f"| {f'{100 * min(agreement):.1f}' if agreement else 'n/a'} "
              f"| {sum(r['eval_wall_time_s'] for r in ok):.0f} |")
    print(f"\nEvaluation seconds in all: {sum(r['eval_wall_time_s'] for r in records):.0f}; of the suite's attacks: "
          + ", ".join(f"{a} {s:.0f}" for a, s in attack_seconds.most_common()))
    escalation_table(by_type, sum(r["eval_wall_time_s"] for r in records))


def escalation_table(by_type: dict, evaluation_seconds: float) -> None:
    """Per node type: the nodes escalated, their mean worst case before and after the escalation, the largest
    drop, the escalated nodes the re-run audit still flags, and the escalation's seconds."""
    print("\n| node type | escalated | worst case before (%) | after (%) | largest drop (points, node) "
          "| still flagged | escalation (s) |")
    print("|---|---|---|---|---|---|---|")
    total = 0.0
    for kind, rs in sorted(by_type.items()):
        escalated = [r for r in rs if r.get("escalation")]
        seconds = sum(step["wall_time_s"] for r in escalated for step in r["escalation"]["steps"])
        total += seconds
        if not escalated:
            print(f"| {kind} | 0 of {len(rs)} | n/a | n/a | n/a | n/a | 0 |")
            continue
        before = [r["escalation"]["robust_acc_before"] for r in escalated]
        worst = max(escalated, key=lambda r: r["escalation"]["robust_acc_before"] - r["robust_acc"])
        drop = worst["escalation"]["robust_acc_before"] - worst["robust_acc"]
        print(f"| {kind} | {len(escalated)} of {len(rs)} | {100 * sum(before) / len(escalated):.1f} "
              f"| {100 * sum(r['robust_acc'] for r in escalated) / len(escalated):.1f} "
              f"| {100 * drop:.1f} ({worst['path']}) | {sum(bool(r['audit']['flags']) for r in escalated)} "
              f"| {seconds:.0f} |")
    print(f"\nEscalation seconds: {total:.0f} of {evaluation_seconds:.0f} evaluation seconds "
          f"({100 * total / max(evaluation_seconds, 1e-9):.0f} %)")


if __name__ == "__main__":
    main()
