"""Stage deployment: the CPU inference cost of every evaluated model of a run, measured in one job that runs
alone (the workflow gives it every core locally and a node of its own on SLURM), so that models of one
architecture time alike: latency per batch (median over rounds, quartiles, range), throughput, and size on
disk and in memory. Every model is timed with the same fixed number of torch threads, in rounds that each
time every model once, each timed pass right after untimed warm-up passes of the same model
(``cost.time_interleaved``). For PTQ INT8 nodes the real integer model (``int8_export.export_int8`` of the
fake-quant checkpoint, as the evaluation exports it) is timed beside its float twin (the same weights
without rounding). Float models run channels-last, as every stage runs them (``runtime.place_model``);
fake-quant models as they are evaluated.

Writes ``deployment.json`` (settings, provenance, one entry per node; ``records.write_deployment_record``)
and ``deployment.csv`` (its flat rows, ``records.deployment_rows``)."""
from __future__ import annotations

import csv
import logging
import os
import platform
import time
from pathlib import Path

import torch

from advfine.core.cost import latency_batch, latency_stats, memory_bytes, serialized_bytes, time_interleaved
from advfine.core.data import load_prepared
from advfine.core.files import atomic_path
from advfine.core.int8_export import export_int8, quantized_backend
from advfine.core.quantize import float_twin
from advfine.core.runtime import configure_backends, place_model, set_threads
from advfine.pipeline.checkpoints import load_model
from advfine.pipeline.provenance import provenance
from advfine.pipeline.records import NODE_KEYS, deployment_rows, read_eval_record, write_deployment_record
from advfine.pipeline.vocab import PTQ, parse_compression

log = logging.getLogger("advfine")


def run(config: dict, *, data: str, evals: list[str], models: list[str], out_json: str, out_csv: str,
        threads: int = 1) -> list[dict]:
    """Time the model of each of ``evals`` (its checkpoint: the same position in ``models``) on batches of
    ``data``'s test images; write ``out_json`` and ``out_csv``. ``threads``: the cores the job holds (all of
    Snakemake's, so nothing runs beside it); torch times with ``deployment.threads``. Returns the nodes."""
    if len(evals) != len(models):
        raise ValueError(f"deployment: {len(evals)} evaluations but {len(models)} models; pass them pairwise")
    settings = config["deployment"]
    rounds, warmup, batch_size = settings["rounds"], settings["warmup"], settings["batch_size"]
    set_threads(settings["threads"])
    cpu = torch.device("cpu")
    configure_backends(cpu, config["deterministic"])
    example = latency_batch(load_prepared(data).test_x, batch_size)
    start = time.perf_counter()
    nodes, timed = [], {}
    for i, (eval_path, model_path) in enumerate(zip(evals, models)):
        record = read_eval_record(eval_path)
        model, ckpt = load_model(model_path)
        node = {key: getattr(record, key) for key in NODE_KEYS} | {
            "eval": str(eval_path), "model_path": str(model_path), "checkpoint_bytes": Path(model_path).stat().st_size,
            "diverged": record.diverged, "models": {}}
        variants = {"model": _placed(model, ckpt["quant"] is None, example)}
        method, level = parse_compression(record.compression)
        if method == PTQ and level == 8 and rounds > 0:
            variants["float_twin"] = _placed(float_twin(model), True, example)
            if record.diverged:
                node["int8_skipped"] = f"the model diverged ({record.diverged_reason})"
            else:
                int8 = export_int8(model)
                variants["int8"] = (int8, example.contiguous(), {"kind": "int8", "channels_last": False,
                                                                 "disk_bytes": serialized_bytes(int8)})
        for name, (module, _, about) in variants.items():
            node["models"][name] = about | {"memory_bytes": memory_bytes(module), "batch_size": batch_size,
                                            "threads": settings["threads"]}
            timed[f"{i}/{name}"] = (module, variants[name][1])
        nodes.append(node)
    log.info("timing %d models of %d nodes: %d rounds, %d warm-up pass(es) before each timed one, batch %d, "
             "%d torch thread(s) (the job holds %d core(s))", len(timed), len(nodes), rounds, warmup, batch_size,
             settings["threads"], threads)
    if rounds > 0:
        times = time_interleaved(timed, rounds, warmup)
        for key, seconds in times.items():
            i, name = key.split("/")
            nodes[int(i)]["models"][name] |= latency_stats(seconds, batch_size)
    meta = {**settings, "job_threads": threads, "torch": torch.__version__, "quantized_engine": quantized_backend(),
            "machine": platform.machine(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "wall_time_s": time.perf_counter() - start}
    write_deployment_record(out_json, meta, nodes, provenance(config, None, cpu))
    _write_csv(out_csv, deployment_rows(out_json))
    return nodes


def _placed(model: torch.nn.Module, is_float: bool, example: torch.Tensor) -> tuple:
    """(model, its input, what it is): a float model channels-last with a channels-last batch, as the
    pipeline runs it; a fake-quant model as evaluated."""
    if is_float:
        return (place_model(model, torch.device("cpu")), example.contiguous(memory_format=torch.channels_last),
                {"kind": "float", "channels_last": True})
    return model, example.contiguous(), {"kind": "fake-quant", "channels_last": False}


def _write_csv(path: str, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else list(NODE_KEYS))
        writer.writeheader()
        writer.writerows(rows)
