"""Stage evaluate: clean and PGD-robust accuracy of one model on the test set, its size and measured
inference cost, and the wall time and cost of every stage that made it."""
from __future__ import annotations

import time
from pathlib import Path

from ..checkpoints import load_model
from ..cost import inference_costs, model_cost, weight_storage_bytes
from ..data import load_prepared
from ..evaluate import evaluate_model
from ..files import read_json, write_json
from ..models import build_model
from ..provenance import provenance
from ..runtime import peak_rss_mb
from ..vocab import PTQ, QUANTIZATION_METHODS, parse_compression, stage_seed
from .common import attack_from_config, precision_for, setup


def run(config: dict, *, data: str, experiment: str, train: str, compression: str, finetune: str, seed: int,
        model: str, metrics: str, out_eval: str, threads: int = 1) -> dict:
    """Evaluate the model at ``model`` (its metrics, with the lineage, at ``metrics``) and write
    ``out_eval``. Fake-quantized models are also attacked through their float twin (transfer attack);
    PTQ INT8 nodes also get a real integer model, exported and measured (``cost.inference_costs``)."""
    device = setup(config, seed, threads)
    upstream = read_json(metrics)
    evaluated, ckpt = load_model(model)
    dataset = load_prepared(data)
    method, level = parse_compression(compression)
    ev = config["evaluate"]
    float_twin, int8_calibration = None, None
    if ckpt["quant"] is not None:
        # deferred: importing NNI costs every job seconds; only quantized models need it
        from ..compress import calibration_batches, float_state_dict

        float_twin = build_model(ckpt["arch"])  # the same float weights without fake quantization
        float_twin.load_state_dict(float_state_dict(evaluated))
        float_twin.eval()
        if method == PTQ and level == 8 and ev["int8_export"]:
            # the batches PTQ calibrated on, so the integer model's ranges come from the same images
            int8_calibration = calibration_batches(dataset.train_x, config["compress"], stage_seed("compress", seed))
    transfer_source = float_twin if ev["transfer_attack_for_quantized"] else None
    start = time.perf_counter()
    result = evaluate_model(evaluated, dataset.test_x, dataset.test_y, attack_from_config(config, "eval"),
                            ev["batch_size"], device, stage_seed("evaluate", seed), transfer_source,
                            precision_for(config, device, ckpt["quant"] is not None))
    wall = time.perf_counter() - start
    evaluated.cpu()
    cost = model_cost(evaluated, dataset.input_shape)
    inference = inference_costs(evaluated, float_twin, dataset.test_x, dataset.test_y, ev, threads,
                                int8_calibration)
    bits = int(level) if method in QUANTIZATION_METHODS else None
    record = {
        "experiment": experiment, "dataset": dataset.name, "arch": ckpt["arch"]["name"],
        "seed": seed, "train": train, "compression": compression, "method": method, "level": level,
        "finetune": finetune, **result,
        "params": cost["params"], "macs": cost["macs"],
        "checkpoint_bytes": Path(model).stat().st_size,
        "weight_bytes": weight_storage_bytes(evaluated, bits),
        **inference, "device": str(device), "eval_wall_time_s": wall, "stages": upstream["stages"],
        "model_path": str(model), "peak_rss_mb": peak_rss_mb(),
        "provenance": provenance(config, seed, device),
    }
    write_json(out_eval, record)
    return record
