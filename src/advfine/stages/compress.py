"""Stage compress: L1-norm filter pruning (filters physically removed) or post-training quantization of
a trained model. The parent checkpoint is only read; the result is a new node."""
from __future__ import annotations

from dataclasses import replace

from advfine.core.cost import model_cost
from advfine.core.data import load_prepared
from advfine.core.models import count_parameters
from advfine.core.prune import prune_filters_l1
from advfine.pipeline.checkpoints import load_model, save_model
from advfine.pipeline.meter import Meter
from advfine.pipeline.records import StageRecord, read_stage_record, write_stage_record
from advfine.pipeline.vocab import PRUNE, PTQ, parse_compression
from advfine.stages.common import fake_quantize, metrics_record, setup


def run(config: dict, *, data: str, compression: str, seed: int, model: str, metrics: str, out_model: str,
        out_metrics: str, threads: int = 1) -> StageRecord:
    """Compress the model at ``model`` (its metrics at ``metrics``) to ``compression`` (prune-<s> or
    ptq-int<b>); dense needs no job and QAT is stage ``qat``."""
    method, level = parse_compression(compression)
    if method not in (PRUNE, PTQ):
        raise ValueError(f"stage compress makes prune-* and ptq-int* nodes, not {compression!r} "
                         "(dense needs no job; QAT is stage qat)")
    device = setup(config | {"device": "cpu"}, seed, threads)  # vocab.CPU_STAGES: its rule asks for no GPU
    parent = read_stage_record(metrics)
    parent_model, ckpt = load_model(model)
    dataset = load_prepared(data)
    meter = Meter(device).start()
    if method == PRUNE:
        compressed, arch = prune_filters_l1(parent_model, ckpt["arch"], level, dataset.train_x[:2])
        macs_spent = 0  # ranking filters by their L1 norm costs next to nothing
    else:
        compressed, calibration_images = fake_quantize(parent_model, PTQ, int(level), dataset.train_x, config, seed)
        arch = ckpt["arch"]
    spent = meter.stop()
    cost = model_cost(compressed, dataset.input_shape)
    if method == PTQ:  # PTQ's only compute: the calibration forward passes
        macs_spent = calibration_images * cost["macs"]
    save_model(out_model, compressed, arch, extra={"compression": compression, "parent": str(model)})
    record = metrics_record(config, seed, device, "compress", replace(spent, train_macs=macs_spent), parent, False,
                            compression=compression, method=method, level=level, arch=arch,
                            parent_params=count_parameters(parent_model), **cost)
    write_stage_record(out_metrics, record)
    return record
