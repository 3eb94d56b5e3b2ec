"""Read the per-model ``eval.json`` files (``records.read_eval_record``, which validates them), joined per
node with the run's ``deployment.json`` (``records.deployment_rows``: each model's inference cost), into
one flat DataFrame (``collect_metrics``) and write it as ``all_metrics.csv`` (``write_metrics_csv``).

* One row per eval.json; columns ``METRIC_COLUMNS``: the record's scalar fields, the values of its nested
  objects (``RECORD_COLUMNS``), ``<stage>_<field>`` per entry of ``stages`` (``STAGE_FIELDS``),
  provenance and attack settings, and the file's path.
* A file that cannot be read, lacks a key or has a value of the wrong type raises ``MetricsFileError``
  (``FileNotFoundError`` when missing) naming the file and the key.
* Unknown ``method``/``train``/``finetune`` values are carried in the DataFrame; the tables and
  figures that do not use them leave them out.
* A diverged model (``diverged: true``) has null accuracies: its row carries NaN there and
  ``diverged`` True, and the tables print "diverged" instead of a number.
* A collapsed model keeps its (finite) accuracies; ``collapsed``/``collapsed_reason`` say whether and why
  the model itself collapsed, ``collapsed_upstream`` which stages of its lineage did (joined with ";",
  empty when none; ``advfine.pipeline.run_health.model_collapse``); ``stats.collapsed_mask`` reads them.
* The attack suite's per-attack records become ``robust_acc_after_<attack>`` and
  ``broken_by_<attack>`` columns (NaN/NA for attacks the suite did not run), the audit ``audit_<check>``
  columns and ``audit_flags`` (the flags joined with ";", empty when none); ``robust_acc_before_escalation``
  (NaN: the node was not escalated); a robustness curve
  ``robust_acc_eps_x<fraction>`` columns; the real INT8 model's numbers ``int8_*`` (NaN/NA for every node
  but PTQ INT8); the deployment record's latency, throughput and memory ``DEPLOYMENT_COLUMNS``
  (``latency_ms``, ``float_twin_latency_ms``, ``int8_latency_ms`` ...; NaN/NA where not timed or
  without a deployment record).
* The cost ledger (``records.Cost``): ``obtain_*``, the cost to obtain the model (its lineage's sum, a
  shared base model counted in full in each node: ``records.lineage_cost``), and ``eval_*``, the
  evaluation job's own cost (attacks, audit, the real INT8 model's checks: more than ``eval_wall_time_s``,
  the attack suite's span); each ``_wall_h``, ``_cpu_h`` and ``_gpu_h`` (hours; GPU NaN off CUDA),
  ``_train_macs``, ``_energy_j`` (NaN where not measured) and ``_energy_method`` (how it was obtained, or
  why not).
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from advfine.core.files import write_text
from advfine.pipeline.records import (DEPLOYED_MODELS, NODE_KEYS, EvalRecord, MetricsFileError, deployment_rows,
                                      read_eval_record)
from advfine.pipeline.vocab import ATTACKS, AUDIT_CHECKS

__all__ = ["METRIC_COLUMNS", "MetricsFileError", "collect_metrics", "write_metrics_csv"]

# The stages of a model's lineage, in order (an eval.json may list others too).
STANDARD_STAGES = ["train_base", "compress", "finetune"]
# Per-stage columns "<stage>_<field>" taken from each entry of eval.json's "stages".
# cpu_time_s, gpu_time_s and energy_j: each stage's own share of the cost ledger (the frontier's stage ratios).
STAGE_FIELDS = ["wall_time_s", "estimated_macs", "adversarial", "device", "peak_rss_mb", "cpu_time_s", "gpu_time_s",
                "energy_j"]

# Columns copied verbatim from the record's fields, in DataFrame order.
_FLAT_COLS = [
    "experiment", "dataset", "arch", "seed", "train", "compression", "method", "level",
    "finetune", "clean_acc", "robust_acc", "n_test", "params", "macs", "checkpoint_bytes",
    "weight_bytes", "device", "eval_wall_time_s",
]
# Columns from the record, by key path (a field, or a value inside its nested objects, which may be absent
# or null: not measured), in DataFrame order.
RECORD_COLUMNS: dict[str, tuple[str, ...]] = {
    "diverged": ("diverged",),
    "collapsed": ("collapsed",),
    "collapsed_reason": ("collapsed_reason",),
    "constant_predictions": ("constant_predictions",),
    "robust_acc_pgd": ("robust_acc_pgd",),
    "robust_acc_whitebox": ("robust_acc_whitebox",),
    "robust_acc_before_escalation": ("escalation", "robust_acc_before"),
    **{f"robust_acc_after_{a}": ("attacks", a, "robust_acc_after") for a in ATTACKS},
    **{f"broken_by_{a}": ("attacks", a, "broken") for a in ATTACKS},
    **{f"audit_{c}": ("audit", "checks", c) for c in AUDIT_CHECKS},
    "int8_robust_acc": ("int8", "robust_acc"),
    "precision": ("precision",),
    "peak_rss_mb": ("peak_rss_mb",),
    "int8_clean_acc": ("int8", "clean_acc"),
    "int8_fake_quant_clean_acc": ("int8", "fake_quant_clean_acc"),
    "int8_agreement": ("int8", "agreement"),
    "int8_robust_images": ("int8", "robust_images"),
    "int8_fake_quant_robust_acc": ("int8", "fake_quant_robust_acc"),
}
# The cost ledger's columns: "<prefix>_<what>" for the record's Cost field of each prefix.
COST_FIELDS = {"obtain": "cost_to_obtain", "eval": "eval_cost"}
_COST_WHATS = ("wall_h", "cpu_h", "gpu_h", "train_macs", "energy_j", "energy_method")
COST_COLUMNS = [f"{prefix}_{what}" for prefix in COST_FIELDS for what in _COST_WHATS]
# Columns from deployment.json (records.deployment_rows), per timed model: its column -> the row's key.
_TIMED = {"latency_ms": "latency_ms", "latency_iqr_ms": "latency_iqr_ms", "latency_min_ms": "latency_min_ms",
          "latency_max_ms": "latency_max_ms", "throughput_ips": "throughput_ips", "memory_bytes": "memory_bytes"}
DEPLOYMENT_COLUMNS: dict[str, str] = {
    **{f"{prefix}{col}": f"{prefix}{key}" for prefix in DEPLOYED_MODELS.values() for col, key in _TIMED.items()},
    "latency_batch": "batch_size", "latency_threads": "threads", "latency_rounds": "repeats",
    "int8_model_bytes": "int8_disk_bytes",
}
# Integer columns that may be NA (nullable Int64) and float columns among RECORD_COLUMNS and DEPLOYMENT_COLUMNS.
_NULLABLE_INT_COLS = [*[f"broken_by_{a}" for a in ATTACKS], "int8_robust_images",
                      *[c for c in DEPLOYMENT_COLUMNS
                        if c.endswith("_bytes") or c in ("latency_batch", "latency_threads", "latency_rounds")]]
_FLOAT_COLS = [c for c in [*RECORD_COLUMNS, *DEPLOYMENT_COLUMNS]
               if c.startswith(("robust_acc", "audit_", "int8_", "float_twin_", "latency_", "throughput", "peak_rss"))
               and c not in _NULLABLE_INT_COLS]
METRIC_COLUMNS = (
    _FLAT_COLS
    + list(RECORD_COLUMNS)
    + list(DEPLOYMENT_COLUMNS)
    + ["audit_flags", "collapsed_upstream"]
    + COST_COLUMNS
    + [f"{s}_{field}" for field in STAGE_FIELDS for s in STANDARD_STAGES]
    + ["git_commit", "config_hash", "attack_eps", "attack_step_size", "attack_steps",
       "attack_eps_space", "attack_eps_pixel", "attack_norm", "path"]
)
_SORT_COLS = ["experiment", "dataset", "arch", "train", "method", "level", "finetune", "seed",
              "compression"]
_KEY_COLS = ["experiment", "dataset", "arch", "train", "compression", "method", "level",
             "finetune", "seed"]


# ----------------------------------------------------------------------------- collecting


def _value(rec: EvalRecord, keys: tuple[str, ...]):
    value = getattr(rec, keys[0])
    for key in keys[1:]:
        value = None if value is None else value.get(key)
    return value


def _row(path: Path, rec: EvalRecord) -> dict:
    row = {k: getattr(rec, k) for k in _FLAT_COLS}
    row["level"] = math.nan if rec.level is None else float(rec.level)
    row.update({col: _value(rec, keys) for col, keys in RECORD_COLUMNS.items()})
    row["audit_flags"] = None if rec.audit is None else ";".join(rec.audit["flags"])
    row["collapsed_upstream"] = ";".join(rec.collapsed_upstream)
    for prefix, key in COST_FIELDS.items():
        cost = getattr(rec, key)
        row.update({f"{prefix}_wall_h": cost.wall_time_s / 3600, f"{prefix}_cpu_h": cost.cpu_time_s / 3600,
                    f"{prefix}_gpu_h": math.nan if cost.gpu_time_s is None else cost.gpu_time_s / 3600,
                    f"{prefix}_train_macs": float(cost.train_macs),
                    f"{prefix}_energy_j": math.nan if cost.energy_j is None else float(cost.energy_j),
                    f"{prefix}_energy_method": cost.energy_method})
    for point in rec.robustness_curve or []:
        row[f"robust_acc_eps_x{point['eps_fraction']:g}"] = float(point["robust_acc"])
    for st in rec.stages:
        row.update({f"{st.stage}_wall_time_s": float(st.wall_time_s),
                    f"{st.stage}_estimated_macs": float(st.estimated_macs),
                    f"{st.stage}_adversarial": st.adversarial,
                    f"{st.stage}_device": st.device,
                    f"{st.stage}_peak_rss_mb": math.nan if st.peak_rss_mb is None else float(st.peak_rss_mb),
                    f"{st.stage}_cpu_time_s": float(st.cpu_time_s),
                    f"{st.stage}_gpu_time_s": math.nan if st.gpu_time_s is None else float(st.gpu_time_s),
                    f"{st.stage}_energy_j": math.nan if st.energy_j is None else float(st.energy_j)})
    row["git_commit"] = rec.provenance["git_commit"]
    row["config_hash"] = rec.provenance["config_hash"]
    for key in ("eps", "step_size", "steps", "eps_space", "eps_pixel", "norm"):
        row[f"attack_{key}"] = rec.attack[key]
    row["path"] = str(path)
    return row


def collect_metrics(paths: Iterable[str | os.PathLike], deployment: str | os.PathLike | None = None) -> pd.DataFrame:
    """Read eval.json files into one DataFrame, one row per file, with the inference cost of each node in
    ``deployment`` (a deployment.json; None: those columns NaN/NA).

    Columns: ``METRIC_COLUMNS`` (+ ``<stage>_<field>`` for any non-standard stage). Per stage:
    ``_wall_time_s``, ``_estimated_macs``, ``_peak_rss_mb``, ``_cpu_time_s``, ``_gpu_time_s`` and ``_energy_j``
    (float, NaN when the stage is not in the model's lineage or did not measure it), ``_adversarial``
    (nullable boolean), ``_device``. The ``RECORD_COLUMNS`` and ``DEPLOYMENT_COLUMNS`` (``peak_rss_mb``,
    ``int8_*``, ``latency_ms`` ...) are float, or nullable Int64 for ``broken_by_*``, the byte counts,
    ``latency_batch``/``latency_threads``/``latency_rounds``; NaN/NA where the record has no value
    (``int8_*``: every node but PTQ INT8).
    Rows are sorted by experiment, dataset, arch, train, method, level, finetune, seed.
    Raises ``FileNotFoundError`` / ``MetricsFileError`` naming the offending file (and key), and
    ``MetricsFileError`` if two files describe the same model (same key columns and seed).
    """
    rows = [_row(Path(p), read_eval_record(p)) for p in paths]
    if deployment is not None:
        timed = {tuple(r[k] for k in NODE_KEYS): r for r in deployment_rows(deployment)}
        for row in rows:
            cost = timed.get(tuple(row[k] for k in NODE_KEYS), {})
            row.update({col: cost.get(key) for col, key in DEPLOYMENT_COLUMNS.items()})
    df = pd.DataFrame(rows)
    extra = sorted(set(df.columns) - set(METRIC_COLUMNS)) if rows else []
    df = df.reindex(columns=METRIC_COLUMNS + extra)
    if df.empty:
        return df
    for key, same in df.groupby(_KEY_COLS, dropna=False, sort=True):
        if len(same) > 1:
            raise MetricsFileError(
                "several eval files describe the same model (" + ", ".join(
                    f"{k}={v}" for k, v in zip(_KEY_COLS, key)) + "): " + ", ".join(same["path"]))
    for col in ("seed", "n_test", "params", "macs", "checkpoint_bytes", "weight_bytes"):
        df[col] = df[col].astype("int64")
    for col in df.columns:
        if col.endswith("_adversarial") or col in ("diverged", "collapsed"):
            df[col] = df[col].astype("boolean")
        elif (col.endswith(("_wall_time_s", "_estimated_macs", "_peak_rss_mb", "_cpu_time_s", "_gpu_time_s",
                               "_energy_j"))
              or col.startswith("robust_acc_eps_x")
              or col in ("attack_eps_pixel", "clean_acc", "robust_acc", *_FLOAT_COLS)
              or (col in COST_COLUMNS and not col.endswith("_energy_method"))):
            df[col] = df[col].astype(float)
        elif col in _NULLABLE_INT_COLS:
            df[col] = df[col].astype("Int64")
    df = df.sort_values(_SORT_COLS, na_position="first", kind="mergesort")
    return df.reset_index(drop=True)


def write_metrics_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """The flat per-model DataFrame from ``collect_metrics`` as CSV (atomically)."""
    path = Path(path)
    write_text(path, df.to_csv(index=False, lineterminator="\n"))
    return path
