"""How often adversarial training of one arm collapses to a constant classifier, over seeds.

    .venv/bin/python benchmarks/collapse_rate.py [--config config.yaml ...] [--arm rb] [--seeds 20]
        [--compression prune-0.8] [--jobs 2] [--threads 1] [--set train.lr=0.05 ...] [--data-root DIR]

Trains seeds 0..N-1 of one arm through the pipeline's own stage functions (advfine.stages: prepare_data,
train_base, compress, finetune), each with the config slice and the per-stage seeds its Snakemake job
gets, then prints per seed the last epoch's training loss and accuracy, the test set's most-predicted
class share, whether it collapsed (advfine.core.health: the stage's ``training_collapse`` or the test set's
``prediction_collapse``), its clean test accuracy and its PGD robust accuracy (``attack.eval``, the
evaluation stage's first attack and seed), then "k of N collapsed". Arms:

- ``rb`` / ``st``: the base model f_rb (PGD adversarial training, ``train`` settings) / f_st;
- ``scratch`` / ``scratch-full`` with ``--compression``: the from-scratch controls, PGD training of the
  compressed architecture from random weights (``finetune`` settings / ``train`` settings). The control
  reads its parent (f_st compressed) for the architecture only, so its parent here is an untrained f_st
  compressed by the compress stage: the same architecture, the same weights after re-initialization
  (tests/test_benchmarks.py checks that a trained and an untrained parent give the same model).

``--config`` files resolve as the workflow's ``--configfile`` does (a complete config, or an overlay and the
base it names), with the schema's defaults filled in.
``--set key=value`` (YAML value, dotted key) changes one setting after the merge, to measure a variant.
Seeds run in ``--jobs`` processes (each with ``--threads`` torch threads); the environment is inherited,
so ``ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2`` applies to every job.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import yaml

from advfine.core.health import prediction_collapse
from advfine.pipeline.config import ConfigError, resolve_config, stage_config, validate_config
from advfine.pipeline.vocab import SCRATCH_CONTROLS, parse_compression

REPO = Path(__file__).resolve().parents[1]

ARMS = ("rb", "st", *SCRATCH_CONTROLS)
ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def merged_config(paths: list[str], settings: list[str], data_root: str | None) -> dict:
    """The config a run with ``--configfile paths...`` gets (advfine.pipeline.config.resolve_config: complete
    configs, overlays after their base, the schema's defaults), then ``settings`` (``dotted.key=yaml
    value``) and ``data_root``, validated again."""
    config = resolve_config([Path(p).resolve() for p in paths], {}, REPO, default=REPO / "config.yaml")
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep:
            raise SystemExit(f"--set {setting!r}: expected dotted.key=value")
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    if data_root is not None:
        config["data"]["data_root"] = str(Path(data_root).resolve())
    return validate_config(config)


def job_config(config: dict, stage: str) -> dict:
    """What a Snakemake job of ``stage`` hands its stage function: the stage's slice plus ``device``."""
    return stage_config(config, stage) | {"device": config["device"]}


def parse_seeds(text: str) -> list[int]:
    """``20`` = seeds 0..19; ``3,5,7``; ``10-19``."""
    if text.isdigit():
        return list(range(int(text)))
    seeds: list[int] = []
    for part in text.split(","):
        low, sep, high = part.partition("-")
        seeds += list(range(int(low), int(high) + 1)) if sep else [int(low)]
    return seeds


def prepare(config: dict, work: Path) -> str:
    from advfine.stages import prepare_data

    data = work / "data.pt"
    prepare_data.run(job_config(config, "prepare_data"), out_data=str(data))
    return str(data)


def untrained_parent(config: dict, data: str, compression: str, seed: int, threads: int, folder: Path) -> tuple:
    """The compress stage's output for an untrained f_st of ``seed`` (the from-scratch controls read it for
    its architecture only): (model path, metrics path)."""
    from advfine.pipeline.checkpoints import save_model
    from advfine.core.data import load_prepared
    from advfine.core.models import build_model
    from advfine.pipeline.records import Cost, write_stage_record
    from advfine.stages import compress
    from advfine.stages.common import dataset_arch, metrics_record, setup

    device = setup(job_config(config, "train_base"), seed, threads)
    arch = dataset_arch(config, load_prepared(data))
    base_model, base_metrics = folder / "base.pt", folder / "base.json"
    save_model(base_model, build_model(arch), arch)
    write_stage_record(base_metrics, metrics_record(config, seed, device, "train_base", Cost.zero(), None))
    out_model, out_metrics = folder / "compressed.pt", folder / "compressed.json"
    compress.run(job_config(config, "compress"), data=data, compression=compression, seed=seed,
                 model=str(base_model), metrics=str(base_metrics), out_model=str(out_model),
                 out_metrics=str(out_metrics), threads=threads)
    return str(out_model), str(out_metrics)


def train_arm(config: dict, arm: str, compression: str | None, data: str, seed: int, threads: int,
              folder: Path) -> dict:
    """Train ``arm`` of ``seed`` through its stage function; returns its training history."""
    from advfine.stages import finetune, train_base

    folder.mkdir(parents=True, exist_ok=True)
    out_model, out_metrics = str(folder / "model.pt"), str(folder / "metrics.json")
    if arm in ("rb", "st"):
        metrics = train_base.run(job_config(config, "train_base"), data=data, train=arm, seed=seed,
                                 out_model=out_model, out_metrics=out_metrics, threads=threads)
    else:
        parent_model, parent_metrics = untrained_parent(config, data, compression, seed, threads, folder)
        metrics = finetune.run(job_config(config, "finetune"), data=data, compression=compression, mode=arm,
                               seed=seed, model=parent_model, metrics=parent_metrics, out_model=out_model,
                               out_metrics=out_metrics, threads=threads)
    return {"history": metrics.details["history"], "model": out_model, "wall_time_s": metrics.wall_time_s,
            "collapsed_reason": metrics.collapsed_reason}


def evaluate_seed(config: dict, data: str, model_path: str, seed: int) -> dict:
    """Clean accuracy, PGD robust accuracy (``attack.eval`` with the evaluation stage's seed; the pipeline's
    ``robust_acc_pgd``) and the predicted classes on the test set."""
    from advfine.pipeline.checkpoints import load_model
    from advfine.core.data import load_prepared
    from advfine.core.evaluate import Suite, evaluate_model, predict
    from advfine.core.runtime import resolve_device
    from advfine.stages.common import attack_from_config
    from advfine.pipeline.vocab import stage_seed

    device = resolve_device(config["device"])
    model, _ = load_model(model_path)
    dataset = load_prepared(data)
    batch = config["evaluate"]["batch_size"]
    suite = Suite(pgd=attack_from_config(config, "eval"), attacks=("pgd",))
    result = evaluate_model(model, dataset.test_x, dataset.test_y, suite, batch, device,
                            stage_seed("evaluate", seed), num_classes=dataset.num_classes)
    predictions = predict(model, dataset.test_x, batch, device).tolist()
    return {"clean_acc": result["clean_acc"], "robust_acc_pgd": result["robust_acc_pgd"],
            "predictions": predictions, "num_classes": dataset.num_classes}


def run_seed(config: dict, arm: str, compression: str | None, data: str, seed: int, threads: int,
             work: str) -> dict:
    """One seed, start to verdict (in a worker process; its output goes to ``work/seed<N>/log.txt``)."""
    folder = Path(work) / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(folder / "log.txt", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        trained = train_arm(config, arm, compression, data, seed, threads, folder)
        evaluated = evaluate_seed(config, data, trained["model"], seed)
    classes = evaluated.pop("predictions")
    num_classes = evaluated.pop("num_classes")
    history = trained["history"]
    top_class, top = Counter(classes).most_common(1)[0]
    # the stage's own verdict (advfine.core.health.training_collapse, on clean training images), then the test set's
    why = trained["collapsed_reason"] or prediction_collapse(classes, num_classes)
    return {"seed": seed, "history": [{k: r[k] for k in ("epoch", "lr", "eps", "loss", "train_acc")} for r in history],
            "loss": history[-1]["loss"], "train_acc": history[-1]["train_acc"], "top_class": top_class,
            "top_share": top / len(classes), "collapsed": why is not None, "why": why, **evaluated,
            "train_wall_time_s": trained["wall_time_s"], "wall_time_s": time.perf_counter() - start}


def summary(rows: list[dict]) -> list[str]:
    """The per-seed table and the totals, in Markdown."""
    lines = ["| seed | last loss | last train acc | top class share | collapsed | clean acc | PGD acc | "
             "first epochs' loss | train s |", "|---:|---:|---:|---:|:---|---:|---:|:---|---:|"]
    for r in sorted(rows, key=lambda r: r["seed"]):
        first = " ".join(f"{h['loss']:.2f}" for h in r["history"][:4])
        lines.append(f"| {r['seed']} | {r['loss']:.4f} | {r['train_acc']:.3f} | {r['top_share']:.3f} | "
                     f"{'**yes**' if r['collapsed'] else 'no'} | {100 * r['clean_acc']:.2f} | "
                     f"{100 * r['robust_acc_pgd']:.2f} | {first} | {r['train_wall_time_s']:.0f} |")
    ok = [r for r in rows if not r["collapsed"]]
    lines.append("")
    lines.append(f"{len(rows) - len(ok)} of {len(rows)} collapsed")
    for name, group in (("all seeds", rows), ("seeds that did not collapse", ok)):
        if len(group) >= 2:
            clean = [100 * r["clean_acc"] for r in group]
            robust = [100 * r["robust_acc_pgd"] for r in group]
            lines.append(f"{name}: clean {statistics.mean(clean):.2f} ± {statistics.stdev(clean):.2f}, PGD "
                         f"{statistics.mean(robust):.2f} ± {statistics.stdev(robust):.2f} (mean ± sd, n={len(group)})")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", nargs="+", default=["config.yaml"],
                        help="config files, merged over config.yaml in order (as snakemake --configfile)")
    parser.add_argument("--arm", choices=ARMS, default="rb")
    parser.add_argument("--compression", help="the compressed node of a from-scratch arm, e.g. prune-0.8, ptq-int8")
    parser.add_argument("--seeds", default="20", help="N (seeds 0..N-1), a list 3,5,7 or a range 10-19")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job")
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once, one process each")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change one setting after the merge, e.g. train.lr=0.05 (repeatable)")
    parser.add_argument("--data-root", help="data.data_root (Fashion-MNIST: {root}/FashionMNIST/raw/*.gz)")
    parser.add_argument("--json", help="also write every seed's record (with its per-epoch history) here")
    parser.add_argument("--workdir", help="keep the models here (default: a temporary folder, removed)")
    args = parser.parse_args(argv)

    if args.arm in SCRATCH_CONTROLS:
        if not args.compression:
            parser.error(f"--arm {args.arm} needs --compression (e.g. prune-0.8 or ptq-int8)")
        method, _ = parse_compression(args.compression)
        if method not in ("prune", "ptq"):
            parser.error(f"--compression {args.compression}: the from-scratch arms here take prune-* or ptq-int*")
    elif args.compression:
        parser.error(f"--compression is for the from-scratch arms {SCRATCH_CONTROLS}, not {args.arm}")
    try:
        config = merged_config(args.config, args.set, args.data_root)
    except ConfigError as error:
        parser.error(str(error))
    seeds = parse_seeds(args.seeds)

    isa = " ".join(f"{k}={os.environ[k]}" for k in ISA_VARIABLES if k in os.environ) or "the machine's own kernels"
    from advfine.core.runtime import cpu_model

    print(f"$ {' '.join(shlex.quote(a) for a in ['benchmarks/collapse_rate.py', *(argv or sys.argv[1:])])}")
    print(f"{config['experiment']}: arm {args.arm}{' under ' + args.compression if args.compression else ''}, "
          f"seeds {seeds[0]}..{seeds[-1]} ({len(seeds)}), {cpu_model()}, {isa}")
    if args.arm == "scratch":
        from advfine.core.schedule import finetune_section

        schedule = finetune_section(config["finetune"], parse_compression(args.compression)[0], scratch=True)
    else:
        schedule = config["train"]
    print(f"schedule: {json.dumps(schedule, sort_keys=True)}")
    print(f"attack.train: {json.dumps(config['attack']['train'], sort_keys=True)}", flush=True)

    with contextlib.ExitStack() as stack:
        work = Path(args.workdir) if args.workdir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        data = prepare(config, work)
        start = time.perf_counter()
        rows = []
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
            futures = [pool.submit(run_seed, config, args.arm, args.compression, data, seed, args.threads, str(work))
                       for seed in seeds]
            for future in as_completed(futures):
                row = future.result()
                rows.append(row)
                print(f"seed {row['seed']}: loss {row['loss']:.4f}, train acc {row['train_acc']:.3f}, top class "
                      f"{row['top_share']:.1%}, clean {row['clean_acc']:.3f}, PGD {row['robust_acc_pgd']:.3f}, "
                      f"{'COLLAPSED: ' + row['why'] if row['collapsed'] else 'ok'} ({row['wall_time_s']:.0f} s)",
                      flush=True)
    print()
    print("\n".join(summary(rows)))
    print(f"wall time {time.perf_counter() - start:.0f} s with --jobs {args.jobs} --threads {args.threads}")
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": argv or sys.argv[1:], "arm": args.arm,
                                               "compression": args.compression, "isa": isa,
                                               "rows": sorted(rows, key=lambda r: r["seed"])}, indent=1))


if __name__ == "__main__":
    main()
