"""Run every benchmark of this folder, one fresh process each, and write their tables to one Markdown
file (default docs/benchmarks.md) headed by the machine, the commit, the date and the command.

    .venv/bin/python benchmarks/run_all.py [--out docs/benchmarks.md] [--threads 2]

`make bench` runs this after the default experiment (`make run`, nothing to do when it is done):
the workflow-overhead benchmark times a no-op re-run of it and reads its jobs' peak memory.
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = [  # (script, title, extra arguments)
    ("training_speed.py", "Adversarial training speed: naive reference, torchattacks, advfine fp32 and bf16", []),
    ("compressed_speed.py", "Compressed models: inference latency", ["--rounds", "7"]),
    ("deployment_noise.py", "Deployment: do models of one architecture time alike?", ["--rounds", "20"]),
    ("fake_quant_speed.py", "Fake quantization: adversarial training step vs dense, ours vs NNI", []),
    ("sync_count.py", "Fake quantization: device syncs and ATen ops per adversarial training step", []),
    ("int8_attack_cost.py", "The real INT8 model: what attacking it costs (evaluate.int8_robust_images)", []),
    ("workflow_overhead.py", "Workflow overhead and peak memory of the default experiment", []),
    ("machine_speed.py", "Machine speed: start-up and PGD-20 throughput", []),
]


def git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return (result.stdout.strip() or "unknown") + (" (with uncommitted changes)" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    parser.add_argument("--threads", default="2")
    args = parser.parse_args()

    import os

    from advfine.core.runtime import cpu_model

    sections, started = [], time.perf_counter()
    for script, title, extra in BENCHMARKS:
        cmd = [sys.executable, str(REPO / "benchmarks" / script)]
        if script != "workflow_overhead.py":
            cmd += ["--threads", args.threads]
        cmd += extra
        print(f"running {script} ...", flush=True)
        start = time.perf_counter()
        result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        body = result.stdout.strip() if result.returncode == 0 else (
            f"**failed** (exit {result.returncode}):\n\n```\n{result.stderr[-3000:]}\n```")
        print(body + "\n", flush=True)
        sections.append(f"## {title}\n\n`.venv/bin/python benchmarks/{script} {' '.join(cmd[2:])}` "
                        f"({seconds:.0f} s)\n\n{body}\n")
    total = time.perf_counter() - started
    header = (f"# Benchmarks\n\nMeasured {time.strftime('%Y-%m-%d %H:%M %Z')} by `make bench` "
              f"(`.venv/bin/python benchmarks/run_all.py`), commit {git_commit()}, in {total / 60:.1f} min.\n"
              f"Machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}. "
              "Alternatives are measured side by side in one run; compare the ratios, the absolute times "
              "vary with the machine and its load.\n")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + "\n" + "\n".join(sections))
    print(f"wrote {out} ({total / 60:.1f} min)")


if __name__ == "__main__":
    main()
