"""Are two runs of the workflow the same measurement? Compares the results of two working directories
(for example the default run before and after a refactoring, on the same machine):

* every ``all_metrics.csv`` and table CSV (``results/<experiment>/tables/*.csv``), cell for cell, with the
  columns that time the run (wall time, latency, memory, speed-ups, the commit) left out; the .md, .tex and
  .html tables are renderings of these CSVs;
* every ``samples.csv`` (per-sample outcomes) byte for byte;
* every ``eval.json`` and ``metrics.json``, field for field, with timing, memory, provenance and the code
  fingerprint left out.

    python benchmarks/compare_runs.py RUN_A RUN_B

prints what differs and exits with status 1 when anything does (0: the same measurement).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

import pandas as pd

# Keys and columns that describe how long the run took, where and from which code, not what it measured.
TIMING = re.compile(r"wall|latency|peak_rss|speedup|speed_up|eval_s|time_ratio|git_commit|provenance|created"
                    r"|fingerprint|minutes|seconds|_s$|cpu_time|_cpu_h$|_gpu_h$|energy"
                    # how the file is written, not what it holds: two formats of one record compare equal
                    r"|^format_version$")


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not TIMING.search(k)}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _diff(a, b, where: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}.{k}: only in one run" for k in sorted(set(a) ^ set(b))]
        return out + [d for k in sorted(a.keys() & b.keys()) for d in _diff(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (p, q) in enumerate(zip(a, b)) for d in _diff(p, q, f"{where}[{i}]")]
    return [] if type(a) is type(b) and a == b else [f"{where}: {a!r} != {b!r}"]


def compare_csv(a: Path, b: Path, rel: Path) -> list[str]:
    da, db = pd.read_csv(a, keep_default_na=False), pd.read_csv(b, keep_default_na=False)
    if list(da.columns) != list(db.columns):
        return [f"{rel}: columns differ: {sorted(set(da.columns) ^ set(db.columns)) or 'order'}"]
    if len(da) != len(db):
        return [f"{rel}: {len(da)} rows against {len(db)}"]
    keep = [c for c in da.columns if not TIMING.search(str(c))]
    return [f"{rel}: column {c} differs" for c in keep if not da[c].equals(db[c])]


def compare_runs(run_a: Path, run_b: Path) -> tuple[dict[str, int], list[str]]:
    """(files compared by kind, differences) between the ``results/`` folders of two runs."""
    a_root, b_root = run_a / "results", run_b / "results"
    for root in (a_root, b_root):
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no results folder (give the working directories of two runs)")
    wanted = ("all_metrics.csv", "eval.json", "metrics.json", "samples.csv")

    def files(root: Path) -> set[Path]:
        return {p.relative_to(root) for p in root.rglob("*") if p.is_file()
                and (p.name in wanted or (p.parent.name == "tables" and p.suffix == ".csv"))}

    fa, fb = files(a_root), files(b_root)
    problems = [f"{rel}: only in {run_a if rel in fa else run_b}" for rel in sorted(fa ^ fb)]
    counts: dict[str, int] = {}
    for rel in sorted(fa & fb):
        a, b = a_root / rel, b_root / rel
        kind = "table csv" if rel.parent.name == "tables" else rel.name
        counts[kind] = counts.get(kind, 0) + 1
        if rel.suffix == ".json":
            problems += [f"{rel}{d}" for d in _diff(_strip(json.loads(a.read_text())),
                                                    _strip(json.loads(b.read_text())), "")]
        elif rel.name == "samples.csv":
            if hashlib.sha256(a.read_bytes()).digest() != hashlib.sha256(b.read_bytes()).digest():
                problems.append(f"{rel}: bytes differ")
        else:
            problems += compare_csv(a, b, rel)
    return counts, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", type=Path, help="working directory of the first run (holds results/)")
    parser.add_argument("run_b", type=Path, help="working directory of the second run")
    args = parser.parse_args(argv)
    try:
        counts, problems = compare_runs(args.run_a, args.run_b)
    except FileNotFoundError as err:
        parser.error(str(err))
    print("compared:", ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())))
    print(f"differences: {len(problems)}")
    for line in problems[:100]:
        print("  ", line)
    return 1 if problems or not counts else 0


if __name__ == "__main__":
    sys.exit(main())
