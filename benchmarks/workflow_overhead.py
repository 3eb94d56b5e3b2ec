"""Workflow overhead: how long Snakemake takes when there is nothing (or nothing yet) to compute.

    .venv/bin/python benchmarks/workflow_overhead.py [--repeats 3]

1. Planning the paper's whole Fashion-MNIST sweep (configs/paper-fmnist.yaml: 3 seeds x 9 sparsities
   x 5 PTQ bit widths x QAT x all fine-tuning modes, 617 jobs) with a dry run in a scratch directory.
2. A no-op re-run of the default experiment (`snakemake --cores 2 all` in this checkout) once
   `make run` has finished it; skipped with a message otherwise.
3. The peak memory of every rule of the default experiment: each job logs its process's peak
   resident set size (``advfine.pipeline.job``: "rule R: peak_rss_mb=M"); the largest per rule is reported.
4. The default run's overhead ratio: its elapsed time (first job start to last job end, from the job
   logs) against the sum of the jobs' in-process times (after their imports) divided by the cores:
   1.0 would mean no start-up or scheduling cost.
Targets: dry run <= 20 s, no-op re-run <= 10 s, every stage <= 2 GB. Best of ``--repeats`` runs.
"""
from __future__ import annotations

import argparse
import re
from collections import defaultdict
from datetime import datetime
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]


def timed(cmd: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - start, result


def best_of(repeats: int, cmd: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    runs = [timed(cmd, cwd) for _ in range(repeats)]
    for _, result in runs:
        if result.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    return min(runs, key=lambda run: run[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cores", type=int, default=2, help="the --cores of the measured default run")
    args = parser.parse_args()

    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="advfine-overhead-"))
    try:
        shutil.copy(REPO / "configs" / "paper-fmnist.yaml", scratch / "config.yaml")
        seconds, result = best_of(args.repeats, SNAKEMAKE + ["--directory", str(scratch), "-n", "all"], scratch)
        jobs = re.search(r"^total\s+(\d+)$", result.stdout, flags=re.M)
        rows.append((f"dry run of the paper Fashion-MNIST sweep ({jobs.group(1) if jobs else '?'} jobs)",
                     seconds, 20.0))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    pending = subprocess.run(SNAKEMAKE + ["--directory", str(REPO), "-n", "all"], cwd=REPO,
                             capture_output=True, text=True)
    if "Nothing to be done" in pending.stdout + pending.stderr:
        seconds, _ = best_of(args.repeats, SNAKEMAKE + ["--directory", str(REPO), "--cores", "2", "all"], REPO)
        rows.append(("no-op re-run of the default experiment", seconds, 10.0))
    else:
        rows.append(("no-op re-run of the default experiment (not measured: run `make run` first)", None, 10.0))

    memory = peak_memory_by_rule(REPO / "logs" / default_experiment())
    overhead = run_overhead(REPO / "logs" / default_experiment(), args.cores)
    print(f"Workflow overhead, best of {args.repeats}\n")
    print("| measurement | seconds | target | met |")
    print("|---|---|---|---|")
    for name, seconds, target in rows:
        if seconds is None:
            print(f"| {name} | n/a | <= {target:g} s | n/a |")
        else:
            print(f"| {name} | {seconds:.1f} | <= {target:g} s | {'yes' if seconds <= target else 'no'} |")
    if overhead:
        jobs, elapsed, in_process = overhead
        print(f"\nDefault run: {jobs} jobs, elapsed {elapsed / 60:.1f} min, in-process {in_process / 60:.1f} min "
              f"summed over jobs; overhead ratio elapsed / (in-process / {args.cores} cores) = "
              f"{elapsed / (in_process / args.cores):.2f}")
    print(f"\nPeak memory (resident set size) of the default experiment's jobs, largest per rule, "
          f"from {sum(len(v) for v in memory.values())} job logs under logs/{default_experiment()}/\n")
    if not memory:
        print("(not measured: run `make run` first)")
        return
    print("| rule | jobs | peak MB (largest) | peak MB (median) | target | met |")
    print("|---|---|---|---|---|---|")
    for rule, values in sorted(memory.items()):
        values.sort()
        largest = values[-1]
        print(f"| {rule} | {len(values)} | {largest:.0f} | {values[len(values) // 2]:.0f} | <= 2048 MB | "
              f"{'yes' if largest <= 2048 else 'no'} |")


def default_experiment() -> str:
    import yaml

    return yaml.safe_load((REPO / "config.yaml").read_text())["experiment"]


def job_times(log_dir: Path) -> list[tuple[str, float, float, float]]:
    """(rule, start, end, in-process s) of the last run of every job whose log is under ``log_dir``: start
    and end are the job's first and last log lines (after its imports), as Unix times."""
    start_re = re.compile(r"^(\S+ \S+) INFO advfine: rule \w+, wildcards", re.M)
    end_re = re.compile(r"^(\S+ \S+) INFO advfine: rule (\w+): peak_rss_mb=[0-9.]+ in_process_s=([0-9.]+)", re.M)
    stamp = lambda s: datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f").timestamp()  # noqa: E731
    jobs = []
    for log in sorted(log_dir.rglob("*.log")):
        text = log.read_text(errors="replace")
        begun, done = start_re.findall(text), end_re.findall(text)
        if begun and done:
            end, rule, seconds = done[-1]
            jobs.append((rule, stamp(begun[-1]), stamp(end), float(seconds)))
    return jobs


def run_overhead(log_dir: Path, cores: int) -> tuple[int, float, float] | None:
    """(jobs, elapsed s, summed in-process s) of the last run of every job under ``log_dir``."""
    jobs = job_times(log_dir)
    if not jobs:
        return None
    return len(jobs), max(j[2] for j in jobs) - min(j[1] for j in jobs), sum(j[3] for j in jobs)


def peak_memory_by_rule(log_dir: Path) -> dict[str, list[float]]:
    """{rule: [peak MB of each job]} from the jobs' logs (the last run of each job counts)."""
    pattern = re.compile(r"rule (\w+): peak_rss_mb=([0-9.]+)")
    memory: dict[str, list[float]] = defaultdict(list)
    for log in log_dir.rglob("*.log"):
        found = pattern.findall(log.read_text(errors="replace"))
        if found:
            rule, mb = found[-1]
            memory[rule].append(float(mb))
    return dict(memory)


if __name__ == "__main__":
    main()
