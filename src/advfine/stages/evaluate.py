"""Stage evaluate: clean accuracy and the worst case over an attack suite of one model on the test set,
the attack-failure checks, a robustness curve for the models of Table 5, the per-sample outcome, the
model's size (and, for PTQ INT8 nodes, the accuracy and robustness of the real integer model), the cost
of every stage that made it, its own cost and the cost to obtain the model (the ledger: ``records.Cost``),
and its health: diverged, or collapsed (itself, or a model it was built from;
``run_health.model_collapse``). Inference latency is the deployment stage's: it times every model in one
job that runs alone."""
from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

import torch

from advfine.core.audit import audit_evaluation
from advfine.core.cost import model_cost, weight_storage_bytes
from advfine.core.data import load_prepared
from advfine.core.evaluate import (ATTACKS, Escalation, Suite, broken_per_attack, divergence, escalate,
                                   evaluate_deployed, evaluate_model, predict, robustness_curve)
from advfine.core.files import atomic_path
from advfine.core.int8_export import export_int8
from advfine.core.quantize import float_twin
from advfine.core.runtime import peak_gpu_mb, peak_rss_mb
from advfine.pipeline.checkpoints import load_model
from advfine.pipeline.meter import Meter
from advfine.pipeline.provenance import provenance
from advfine.pipeline.records import EvalRecord, lineage_cost, read_stage_record, write_eval_record
from advfine.pipeline.run_health import model_collapse
from advfine.pipeline.vocab import PTQ, QUANTIZATION_METHODS, parse_compression, stage_seed
from advfine.stages.common import precision_for, setup

log = logging.getLogger("advfine")


def run(config: dict, *, data: str, experiment: str, train: str, compression: str, finetune: str, seed: int,
        model: str, metrics: str, out_eval: str, out_samples: str, curve: bool = False,
        threads: int = 1) -> EvalRecord:
    """Evaluate the model at ``model`` (its metrics, with the lineage, at ``metrics``); write ``out_eval``
    and the per-sample outcome ``out_samples`` (CSV). ``curve``: also measure the robustness curve
    (the workflow asks for it for the models of Table 5)."""
    device = setup(config, seed, threads, stable_shapes=False)  # attacks shrink their batches
    upstream = read_stage_record(metrics)
    evaluated, ckpt = load_model(model)
    dataset = load_prepared(data)
    method, level = parse_compression(compression)
    ev = config["evaluate"]
    suite = Suite.from_config(config["attack"], ev)
    escalation = Escalation.from_config(config["attack"], ev)
    batch = ev["batch_size"]
    twin, export = None, False
    if ckpt["quant"] is not None:
        twin = float_twin(evaluated)  # the same float weights without rounding: source of transfer attacks
        # the deployed integer model is convert_fx of this fake-quant model (same scales): PTQ INT8 nodes
        export = method == PTQ and level == 8 and ev["int8_export"]
    precision = precision_for(config, device, ckpt["quant"] is not None)
    eval_seed = stage_seed("evaluate", seed)
    num_classes = dataset.num_classes
    meter = Meter(device).start()
    start = time.perf_counter()
    diverged = divergence(evaluated, dataset.test_x, batch, device)
    if diverged:
        log.warning("the model diverged (%s): reported as diverged, not scored", diverged)
        result = {"clean_acc": None, "robust_acc": None, "robust_acc_pgd": None, "robust_acc_whitebox": None,
                  "n_test": len(dataset.test_y), "precision": precision, "attack": suite.pgd.describe(),
                  "suite": suite.describe(), "attacks": {}, "attack_order": [], "audit": None,
                  "robustness_curve": None, "escalation": None}
        outcome = None
    else:
        result = evaluate_model(evaluated, dataset.test_x, dataset.test_y, suite, batch, device, eval_seed,
                                twin, precision, num_classes)
        outcome = result.pop("per_sample")
        result["audit"] = audit_evaluation(evaluated, dataset.test_x, dataset.test_y, result | {"per_sample": outcome},
                                           suite, ev["audit"], batch, device, eval_seed)
        result["escalation"] = None
        reasons = escalation.reasons(ckpt["quant"] is not None, result["audit"]["flags"])
        if reasons:
            log.info("escalating (%s): stronger attacks on the samples still standing", ", ".join(reasons))
            outcome, steps = escalate(evaluated, dataset.test_x, dataset.test_y, outcome, escalation.steps, batch,
                                      device, eval_seed, twin, precision, num_classes)
            result["escalation"] = {"reasons": reasons, "robust_acc_before": result["robust_acc"],
                                    "audit_before": result["audit"], "steps": steps}
            if steps:  # a step ran (none runs when no sample was left standing): the reported number moved
                result["robust_acc"] = steps[-1]["robust_acc_after"]
                # the audit of the reported number: checks run at the strongest step's settings, the
                # gradient-free breaks counted over the suite and the escalation together
                attacks = broken_per_attack([result["attacks"], *(step["attacks"] for step in steps)])
                result["audit"] = audit_evaluation(evaluated, dataset.test_x, dataset.test_y,
                                                   {"attacks": attacks, "per_sample": outcome},
                                                   escalation.steps[len(steps) - 1], ev["audit"], batch, device,
                                                   eval_seed)
        result["robustness_curve"] = (robustness_curve(evaluated, dataset.test_x, dataset.test_y, outcome["clean_ok"],
                                                       suite, ev["curve_eps_fractions"], batch, device, eval_seed,
                                                       precision, num_classes) if curve else None)
        log.info("clean %.4f, PGD %.4f, worst case %.4f, audit flags %s", result["clean_acc"], result["robust_acc_pgd"],
                 result["robust_acc"], result["audit"]["flags"] or "none")
    # a model its stage trained has a history (train_base, finetune, QAT); pruning and PTQ train nothing
    collapse = model_collapse(upstream.stages, None if outcome is None else outcome["predictions"].tolist(),
                              num_classes, trained=upstream.trained)
    if collapse["constant_predictions"]:
        log.info("compression without training left a constant classifier (%s): a measurement, kept in the means",
                 collapse["constant_predictions"])
    if collapse["collapsed"]:
        log.warning("COLLAPSED: this model is a constant classifier (%s): evaluated, but reported as collapsed, "
                    "never averaged", collapse["collapsed_reason"])
    if collapse["collapsed_upstream"]:
        log.warning("COLLAPSED UPSTREAM: this model is built on a model that collapsed in training (stage %s): "
                    "evaluated, but reported as collapsed, never averaged", ", ".join(collapse["collapsed_upstream"]))
    wall = time.perf_counter() - start
    evaluated.cpu()
    cost = model_cost(evaluated, dataset.input_shape)
    int8_model = None
    if export and not diverged:
        int8_model = export_int8(evaluated)
    elif export:
        log.warning("no real INT8 model: the model diverged")
    int8 = {"int8": None}
    if diverged and export:
        int8["int8_skipped"] = f"the model diverged ({diverged})"
    deployed = None
    if int8_model is not None:
        int8["int8"] = _int8_agreement(evaluated, int8_model, dataset.test_x, dataset.test_y, batch)
        deployed = evaluate_deployed(int8_model, twin, dataset.test_x, dataset.test_y, suite, batch,
                                     eval_seed, num_classes, fake_quant_outcome=outcome,
                                     robust_images=ev["int8_robust_images"])
        int8["int8"] |= {key: deployed[key] for key in ("robust_acc", "robust_images", "fake_quant_robust_acc",
                                                        "attacks")}
    eval_cost = meter.stop()
    _write_samples(out_samples, dataset.test_y, outcome, deployed)
    bits = int(level) if method in QUANTIZATION_METHODS else None
    record = EvalRecord(
        experiment=experiment, dataset=dataset.name, arch=ckpt["arch"]["name"],
        seed=seed, train=train, compression=compression, method=method, level=level,
        finetune=finetune, **result, diverged=diverged is not None, diverged_reason=diverged,
        **collapse,
        params=cost["params"], macs=cost["macs"],
        checkpoint_bytes=Path(model).stat().st_size,
        weight_bytes=weight_storage_bytes(evaluated, bits),
        **int8, device=str(device), eval_wall_time_s=wall, stages=upstream.stages,
        eval_cost=eval_cost, cost_to_obtain=lineage_cost(upstream.stages),
        model_path=str(model), peak_rss_mb=peak_rss_mb(), peak_gpu_mb=peak_gpu_mb(device),
        provenance=provenance(config, seed, device),
    )
    write_eval_record(out_eval, record)
    return record


def _int8_agreement(fake_quant, int8_model, test_x, test_y, batch_size: int) -> dict:
    """The real integer model's clean accuracy beside the fake-quant model's (both on the CPU, where the
    integer kernels run) and how often their predictions agree."""
    cpu = torch.device("cpu")
    int8_pred = predict(int8_model, test_x, batch_size, cpu)
    fake_pred = predict(fake_quant, test_x, batch_size, cpu)
    result = {"clean_acc": (int8_pred == test_y).float().mean().item(),
              "fake_quant_clean_acc": (fake_pred == test_y).float().mean().item(),
              "agreement": (int8_pred == fake_pred).float().mean().item()}
    log.info("real INT8 model: %s", result)
    return result


def _write_samples(path: str, labels, outcome: dict | None, deployed: dict | None) -> None:
    """One row per test sample: its label, whether the model classifies it correctly clean and under
    the whole suite, and the attack that broke it (empty: robust, or misclassified clean); for PTQ INT8
    nodes the same for the real integer model (its robust and broken-by cells empty on the samples it
    was not attacked on: ``evaluate.int8_robust_images``). A diverged model has no outcome: the columns
    stay empty."""
    columns = ["index", "label", "clean_correct", "robust", "broken_by"]
    if deployed is not None:
        columns += ["int8_clean_correct", "int8_robust", "int8_broken_by"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for i, label in enumerate(labels.tolist()):
            row = [i, label] + (_outcome_cells(outcome, i) if outcome is not None else ["", "", ""])
            if deployed is not None:
                cells = _outcome_cells(deployed["per_sample"], i)
                row += cells if deployed["per_sample"]["attacked"][i] else [cells[0], "", ""]
            writer.writerow(row)


def _outcome_cells(outcome: dict, i: int) -> list:
    clean = bool(outcome["clean_ok"][i])
    broken = int(outcome["broken_by"][i])
    return [int(clean), int(clean and broken < 0), ATTACKS[broken] if broken >= 0 else ""]
