"""Does our attack suite find what the official AutoAttack finds? Per evaluated node of a results tree, robust
accuracy under our suite (the node's ``samples.csv``) beside robust accuracy under the official AutoAttack.

    .venv/bin/python benchmarks/autoattack_agreement.py RESULTS_ROOT [--experiment NAME] [--nodes SUBSTRING ...]
        [--n-images N] [--version standard] [--attacks apgd-ce apgd-t fab-t square] [--batch-size 250] [--seed 0]
        [--threads 1] [--max-gap 1.0] [--out agreement.csv]

RESULTS_ROOT is the run's directory (the one holding ``results/``; ``RESULTS_ROOT/results/<experiment>`` works
too). For every ``eval.json`` under ``results/<experiment>/`` (every experiment when there is one; ``--nodes``
keeps the nodes whose path contains one of the substrings), the node's checkpoint is loaded as the evaluate
stage loads it (``advfine.pipeline.checkpoints.load_model``, ``advfine.core.runtime.place_model``), with the
prepared test set (``advfine.core.data.load_prepared``). The first ``--n-images`` test images (default: all
of them, the images our evaluation attacked) are attacked by the official AutoAttack (``pyautoattack``,
``--version standard``: APGD-CE, APGD-T, FAB-T, Square with their published settings) in the node's threat
model: the norm and eps in pixels of the eval record's ``attack`` section, seed ``--seed``, fp32, on a GPU when
there is one. Diverged and collapsed nodes are skipped with a line saying so.

AutoAttack's returned points (its adversarial point where it succeeded, the clean image elsewhere) are then
judged twice: by OUR rule (``advfine.core.decision.correct``: the true logit strictly the largest, a tie is an
error; a point outside the threat model, ``ThreatModel.contains``, does not count against the model) and by
AutoAttack's own (its returned labels: argmax, which breaks a tie towards the lower class index). One row per
node:

- ``ours_robust_pct``: robust accuracy under our suite on those images (``samples.csv``'s robust column);
- ``aa_robust_pct``: under AutoAttack, judged by our rule; ``aa_argmax_robust_pct``: judged by AutoAttack;
- ``gap_points``: ours - AutoAttack (our rule), in percentage points. Positive: our suite missed adversarial
  points that AutoAttack found, so our number overstates robustness by that much;
- ``aa_only``: samples AutoAttack broke that we count robust, ``aa_only_ties`` how many of those are exact
  logit ties at AutoAttack's point (broken only by the strict rule), ``ours_only``: samples we broke and
  AutoAttack did not (our suite also has PGD and the transfer attack), ``outside``: AutoAttack points outside
  the threat model (0 expected).

Exit status 1 when any node's gap is above ``--max-gap`` points (default 1.0), 0 otherwise. ``--out`` writes the
table as CSV (rewritten after every node). Each node takes seconds to minutes on a CPU: AutoAttack's standard
version spends 100 APGD steps per target class (9), FAB-T's 9 targets and Square's 5000 queries on every sample
still standing (a node with 25 of 100 samples standing: about 4 minutes on one busy core). A paper-faithful
threat model (not clamped to [0, 1]) is attacked with eps in pixels, clamped: AutoAttack always clamps.
``--attacks apgd-ce apgd-t`` runs only those of the version's attacks, each at the version's settings, for a
sweep over many nodes with FAB-T and Square run on a subset (on the default run's nodes where both were run, they
broke nothing APGD-CE and APGD-T had left: docs/robustness.md). A row records the attacks that produced it.

Which AutoAttack: ``pyautoattack`` 0.2.0 from the package index (MIT, Croce & Hein), pinned in requirements.txt.
Its attack code was read beside the reference repository fra31/auto-attack (``autoattack/autopgd_base.py``,
``autoattack.py``, ``square.py``, ``fab_base.py`` as stored for commits 1df1daa, 1b76134, 1706c9b, 0581b8b):
the same algorithms and the same standard-version settings. APGD: 100 iterations, rho 0.75, first step 2 eps,
momentum 0.75, checkpoints at 0.22/0.06/0.03 of the iterations, the DLR and targeted-DLR losses, the seed set
before each run; APGD-T and FAB-T on the 9 top wrong classes, 1 restart; FAB: alpha_max 0.1, eta 1.05, beta 0.9;
Square: 5000 queries, p_init 0.8, no schedule rescaling; the cascade over the standing samples and the final
argmax success test. The differences are outside the attacks' arithmetic, and match the repository's later
revisions: a keyword-only ``AutoAttack(model, norm=, eps=, seed=, version=, device=)`` that always returns
``(x_adv, y_adv)``, messages through the ``logging`` logger ``auto-attack`` instead of print, the checks
(zero gradients, randomized or dynamic models, Square's success rate) as warnings, an optional resumable state
file, APGD's checkpoint settings computed in ``__init__``, Square's window capped at the image side and an L1
Square, and the L1 APGD start projected as ``x_init - x`` (our threat models are L-inf and L2 only).

What the comparison cannot see: AutoAttack returns the clean image for a sample its argmax rule counts robust,
so a point where the true logit ties another of a HIGHER class index (argmax: correct; our rule: an error) is
lost, and Square stops on such a tie (its success test is margin <= 0). The AutoAttack column judged by our rule
may therefore miss breaks its attacks reached, never invent one: its robust accuracy is an upper bound, and
``aa_only_ties`` counts only the ties its argmax also counted as breaks (the other class of lower index).
"""
from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from pyautoattack import AutoAttack
from torch import nn

from advfine.core.attacks.threat import ThreatModel
from advfine.core.data import load_prepared
from advfine.core.decision import correct, margin
from advfine.core.evaluate import logits_of
from advfine.core.runtime import place_model
from advfine.pipeline.checkpoints import load_model
from advfine.pipeline.nodes import Node
from advfine.pipeline.records import EvalRecord, read_eval_record

COLUMNS = ["node", "attacks", "n_images", "ours_robust_pct", "aa_robust_pct", "aa_argmax_robust_pct", "gap_points",
           "aa_only", "aa_only_ties", "ours_only", "outside", "wall_s"]
AA_NORMS = {"linf": "Linf", "l2": "L2"}


@dataclass
class NodeInputs:
    """What AutoAttack needs of one evaluated node, loaded as the evaluate stage loads it."""

    node: Node
    record: EvalRecord
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    ours_robust: torch.Tensor  # bool per image: robust under our suite (samples.csv)
    threat: ThreatModel


def run_directory(results_root: Path, experiment: str | None) -> tuple[Path, str | None]:
    """The run's directory (holding ``results/``) and the experiment, from either spelling of the argument."""
    results_root = Path(results_root).resolve()
    if not (results_root / "results").is_dir() and results_root.parent.name == "results":
        return results_root.parent.parent, experiment or results_root.name
    return results_root, experiment


def evaluated_nodes(run_dir: Path, experiment: str | None = None, substrings=()) -> list[Path]:
    """The eval.json files of the run (relative to ``run_dir``), sorted, those containing one of ``substrings``."""
    pattern = f"results/{experiment}/**/eval.json" if experiment else "results/*/**/eval.json"
    paths = sorted(p.relative_to(run_dir) for p in run_dir.glob(pattern))
    return [p for p in paths if not substrings or any(s in str(p) for s in substrings)]


def node_label(node: Node) -> str:
    return f"seed{node.seed}/base-{node.train}/{node.compression}/ft-{node.finetune}"


def skip_reason(record: EvalRecord) -> str | None:
    """Why a node is not attacked: it diverged (no scores) or collapsed (never averaged), else None."""
    if record.diverged:
        return f"diverged ({record.diverged_reason})"
    if record.collapsed:
        return f"collapsed ({record.collapsed_reason})"
    return None


def threat_of(record: EvalRecord) -> ThreatModel:
    """The threat model the node was evaluated in, eps in pixels (the eval record's ``attack`` section)."""
    attack = record.attack
    return ThreatModel(norm=attack["norm"], eps=float(attack["eps_pixel"]),
                       clamp=bool(attack["clamped_to_valid_range"]))


def read_robust_column(samples_path: Path) -> torch.Tensor:
    """samples.csv's ``robust`` column (bool per test image, in the test set's order)."""
    with open(samples_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if [int(row["index"]) for row in rows] != list(range(len(rows))):
        raise ValueError(f"{samples_path}: the index column is not 0..{len(rows) - 1}")
    return torch.tensor([row["robust"] == "1" for row in rows], dtype=torch.bool)


def load_node(run_dir: Path, eval_path: Path, n_images: int | None = None) -> NodeInputs:
    """The node of ``eval_path`` (relative to ``run_dir``): its model, its first ``n_images`` test images and
    our verdict on them."""
    node = Node.from_path(eval_path)
    record = read_eval_record(run_dir / eval_path)
    model, _ = load_model(run_dir / node.model)
    dataset = load_prepared(run_dir / node.data)
    ours = read_robust_column(run_dir / node.samples)
    if len(ours) != len(dataset.test_y):
        raise ValueError(f"{node.samples}: {len(ours)} rows for {len(dataset.test_y)} test images")
    n = len(ours) if n_images is None else min(n_images, len(ours))
    return NodeInputs(node, record, model, dataset.test_x[:n], dataset.test_y[:n], ours[:n], threat_of(record))


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, device: torch.device,
                   seed: int = 0, version: str = "standard", batch_size: int = 250,
                   attacks: tuple[str, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The official AutoAttack on (x, y): its returned points and labels (on the CPU). ``attacks``: only these
    of the version's attacks (AutoAttack's names, ``apgd-ce``...), each with the version's settings."""
    place_model(model, device).eval()
    adversary = AutoAttack(model, norm=AA_NORMS[threat.norm], eps=threat.eps, seed=seed, version=version,
                           device=device)
    if attacks is not None:
        unknown = set(attacks) - set(adversary.attacks_to_run)
        if unknown:
            raise ValueError(f"not attacks of AutoAttack's {version} version: {sorted(unknown)}")
        adversary.attacks_to_run = [name for name in adversary.attacks_to_run if name in attacks]
    x_adv, y_adv = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    return x_adv.detach().cpu(), y_adv.detach().cpu()


def judge(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, y_adv: torch.Tensor,
          threat: ThreatModel, device: torch.device, batch_size: int = 250) -> dict[str, torch.Tensor]:
    """AutoAttack's points judged per sample: ``inside`` the threat model, ``robust`` by our rule (correct on
    the clean image, and on AutoAttack's point unless that lies outside), ``robust_argmax`` by AutoAttack's
    own (its returned label is the true one), ``tie`` (the true logit ties the largest other at its point)."""
    clean_ok = correct(logits_of(model, x, batch_size, device), y)
    adv_margin = margin(logits_of(model, x_adv, batch_size, device), y)
    inside = threat.contains(x_adv, x)
    broken = inside & ~(adv_margin > 0)
    return {"clean_ok": clean_ok, "inside": inside, "robust": clean_ok & ~broken, "robust_argmax": y_adv == y,
            "tie": adv_margin == 0}


def compare(label: str, ours_robust: torch.Tensor, judged: dict[str, torch.Tensor], wall_s: float = 0.0,
            attacks: str = "standard") -> dict:
    """One row of the table: our robust accuracy beside AutoAttack's (``attacks``: which of its attacks ran), and
    the samples each broke alone."""
    n = len(ours_robust)
    aa_only = ours_robust & ~judged["robust"]
    ours_only = ~ours_robust & judged["robust"]
    # from counts, in double precision: 2 samples of 200 are a gap of exactly 1 point, not 1.0000002
    ours_count, aa_count = int(ours_robust.sum()), int(judged["robust"].sum())
    return {"node": label, "attacks": attacks, "n_images": n, "ours_robust_pct": 100.0 * ours_count / n,
            "aa_robust_pct": 100.0 * aa_count / n,
            "aa_argmax_robust_pct": 100.0 * int(judged["robust_argmax"].sum()) / n,
            "gap_points": 100.0 * (ours_count - aa_count) / n, "aa_only": int(aa_only.sum()),
            "aa_only_ties": int((aa_only & judged["tie"]).sum()), "ours_only": int(ours_only.sum()),
            "outside": int((~judged["inside"]).sum()), "wall_s": wall_s}


def agreement_row(inputs: NodeInputs, device: torch.device, seed: int = 0, version: str = "standard",
                  batch_size: int = 250, attacks: tuple[str, ...] | None = None) -> dict:
    """AutoAttack on one loaded node (``attacks``: only these of the version's), judged and compared with our
    verdict."""
    start = time.perf_counter()
    x_adv, y_adv = run_autoattack(inputs.model, inputs.x, inputs.y, inputs.threat, device, seed, version, batch_size,
                                  attacks)
    judged = judge(inputs.model, inputs.x, inputs.y, x_adv, y_adv, inputs.threat, device, batch_size)
    return compare(node_label(inputs.node), inputs.ours_robust, judged, time.perf_counter() - start,
                   version if attacks is None else "+".join(attacks))


def format_table(rows: list[dict]) -> str:
    header = ["node", "attacks", "n", "ours %", "AA % (ours)", "AA % (argmax)", "gap", "AA-only", "(ties)", "ours-only",
              "outside", "s"]
    lines = [header]
    for r in rows:
        lines.append([r["node"], r["attacks"], str(r["n_images"]), f"{r['ours_robust_pct']:.1f}",
                      f"{r['aa_robust_pct']:.1f}", f"{r['aa_argmax_robust_pct']:.1f}", f"{r['gap_points']:+.1f}",
                      str(r["aa_only"]), str(r["aa_only_ties"]), str(r["ours_only"]), str(r["outside"]),
                      f"{r['wall_s']:.0f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(line, widths))) for line in lines)


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results_root", type=Path)
    parser.add_argument("--experiment")
    parser.add_argument("--nodes", nargs="+", default=(), metavar="SUBSTRING")
    parser.add_argument("--n-images", type=int, default=None, help="the first N test images (default: all)")
    parser.add_argument("--version", default="standard", choices=["standard"])
    parser.add_argument("--attacks", nargs="+", choices=["apgd-ce", "apgd-t", "fab-t", "square"],
                        help="only these of the version's attacks, at its settings (default: all of them)")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-gap", type=float, default=1.0, help="points; a larger gap exits 1")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run_dir, experiment = run_directory(args.results_root, args.experiment)
    paths = evaluated_nodes(run_dir, experiment, args.nodes)
    if not paths:
        print(f"no eval.json under {run_dir}/results/{experiment or '*'}", file=sys.stderr)
        return 2
    print(f"{len(paths)} evaluated node(s) under {run_dir}/results/{experiment or '*'}; AutoAttack {args.version}, "
          f"{'all its attacks' if args.attacks is None else 'only ' + ' + '.join(args.attacks)}, "
          f"seed {args.seed}, on {device}; images: "
          f"{'all of the test set' if args.n_images is None else f'the first {args.n_images}'}", flush=True)
    rows = []
    for path in paths:
        record = read_eval_record(run_dir / path)
        reason = skip_reason(record)
        if reason:
            print(f"skipped {node_label(Node.from_path(path))}: {reason}", flush=True)
            continue
        inputs = load_node(run_dir, path, args.n_images)
        torch.manual_seed(args.seed)
        rows.append(agreement_row(inputs, device, args.seed, args.version, args.batch_size,
                                  None if args.attacks is None else tuple(args.attacks)))
        print(format_table(rows[-1:]).splitlines()[-1] + f"  ({inputs.threat.norm} eps {inputs.threat.eps:g})",
              flush=True)
        if args.out:  # after every node: a long run stopped early keeps what it measured
            write_csv(args.out, rows)
    print(format_table(rows))
    over = [r["node"] for r in rows if r["gap_points"] > args.max_gap]
    if over:
        print(f"{len(over)} node(s) with a gap above {args.max_gap:g} points: {', '.join(over)}")
        return 1
    print(f"every gap is at most {args.max_gap:g} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
