"""Where a run's time goes, two versions side by side on this machine: per stage, the jobs and their
in-process seconds summed (after each job's imports, from the job logs), then the run's elapsed time
(first job start to last job end), its in-process total and its overhead ratio (elapsed over in-process
time / cores: 1.0 would mean no start-up or scheduling cost).

    .venv/bin/python benchmarks/run_time_split.py --old REV [--new REV] [--cores 2]
    .venv/bin/python benchmarks/run_time_split.py --logs OLD_LOG_DIR NEW_LOG_DIR [--cores 2]

With ``--old``/``--new`` (``--new`` defaults to the working tree) each version's default experiment
(its own ``config.yaml``) runs from scratch in a scratch checkout, one after the other, with
``snakemake all --cores N``, its package imported from that checkout (the dependencies are this
environment's); ``--keep DIR`` keeps the two checkouts, results included, in DIR/old and DIR/new.
``--logs`` reads two runs already made (their ``logs/<experiment>`` folders).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

from workflow_overhead import job_times

REPO = Path(__file__).resolve().parents[1]


def checkout(rev: str | None, where: Path) -> Path:
    """A scratch copy of ``rev`` (None: the working tree, uncommitted changes included) at ``where``."""
    where.mkdir(parents=True)
    if rev is None:
        files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.split("\0")
        for name in filter(None, files):
            if (REPO / name).is_file():
                (where / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, where / name)
    else:
        archive = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where


def run_default(project: Path, cores: int) -> tuple[Path, float]:
    """Run ``project``'s default experiment from scratch; return its job-log folder and wall seconds."""
    env = os.environ | {"PYTHONPATH": str(project / "src")}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "snakemake", "all", "--cores", str(cores)], cwd=project, env=env,
                            capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"the default run in {project} failed:\n{result.stderr[-3000:]}")
    experiment = yaml.safe_load((project / "config.yaml").read_text())["experiment"]
    return project / "logs" / experiment, seconds


def split(log_dir: Path) -> dict:
    """Per rule: jobs and summed in-process seconds; the run's elapsed and in-process totals."""
    jobs = job_times(log_dir)
    if not jobs:
        sys.exit(f"no finished job logs under {log_dir}")
    per_rule: dict[str, list[float]] = defaultdict(list)
    for rule, _, _, seconds in jobs:
        per_rule[rule].append(seconds)
    return {"rules": {rule: (len(v), sum(v)) for rule, v in per_rule.items()},
            "elapsed": max(j[2] for j in jobs) - min(j[1] for j in jobs), "in_process": sum(j[3] for j in jobs),
            "jobs": len(jobs)}


def ratio(old: float, new: float) -> str:
    return f"{old / new:.2f}x" if new > 0 else "n/a"


def table(old: dict, new: dict, cores: int, names: tuple[str, str]) -> str:
    rows = ["| stage | jobs (old) | in-process s (old) | jobs (new) | in-process s (new) | old / new |",
            "|---|---|---|---|---|---|"]
    for rule in sorted(old["rules"].keys() | new["rules"].keys(),
                       key=lambda r: -max(old["rules"].get(r, (0, 0))[1], new["rules"].get(r, (0, 0))[1])):
        (n_old, s_old), (n_new, s_new) = old["rules"].get(rule, (0, 0.0)), new["rules"].get(rule, (0, 0.0))
        rows.append(f"| {rule} | {n_old} | {s_old:.0f} | {n_new} | {s_new:.0f} | {ratio(s_old, s_new)} |")
    rows.append(f"| **all jobs** | {old['jobs']} | {old['in_process']:.0f} | {new['jobs']} | {new['in_process']:.0f} | "
                f"{ratio(old['in_process'], new['in_process'])} |")
    overhead = lambda run: run["elapsed"] / (run["in_process"] / cores)  # noqa: E731
    rows.append(f"| elapsed (first job start to last job end), s | - | {old['elapsed']:.0f} | - | {new['elapsed']:.0f} | "
                f"{ratio(old['elapsed'], new['elapsed'])} |")
    rows.append(f"| overhead ratio: elapsed / (in-process / {cores} cores) | - | {overhead(old):.2f} | - | "
                f"{overhead(new):.2f} | - |")
    return f"old: {names[0]}; new: {names[1]}\n\n" + "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", help="git revision of the old version")
    parser.add_argument("--new", help="git revision of the new version (default: the working tree)")
    parser.add_argument("--logs", nargs=2, metavar=("OLD", "NEW"), help="the job-log folders of two runs already made")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="run in this (new or empty) folder and keep both runs there")
    args = parser.parse_args()
    if bool(args.logs) == bool(args.old):
        parser.error("give either --old REV or --logs OLD NEW")

    if args.logs:
        old, new = (split(Path(folder)) for folder in args.logs)
        print(table(old, new, args.cores, tuple(args.logs)))
        return
    if args.keep and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(f"--keep {args.keep}: the folder is not empty")
    scratch = args.keep or Path(tempfile.mkdtemp(prefix="advfine-split-"))
    try:
        runs, snakemake_s = {}, {}
        for name, rev in (("new", args.new), ("old", args.old)):  # the new first: usually the shorter
            project = checkout(rev, (scratch / name))
            print(f"running the default experiment of {rev or 'the working tree'} ...", flush=True)
            log_dir, snakemake_s[name] = run_default(project, args.cores)
            runs[name] = split(log_dir)
        print(table(runs["old"], runs["new"], args.cores, (args.old, args.new or "the working tree")))
        print(f"\nSnakemake's own wall time, `snakemake all --cores {args.cores}`: old {snakemake_s['old'] / 60:.1f} "
              f"min, new {snakemake_s['new'] / 60:.1f} min ({ratio(snakemake_s['old'], snakemake_s['new'])})")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
