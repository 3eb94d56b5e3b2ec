"""Load and validate the per-model ``eval.json`` files into one flat DataFrame (``collect_metrics``)
and write it as ``all_metrics.csv`` (``write_metrics_csv``).

* One row per eval.json; columns ``METRIC_COLUMNS``: the top-level keys, the ``OPTIONAL_KEYS``
  of newer files, ``<stage>_<field>`` per entry of ``stages`` (``STAGE_FIELDS``), provenance and
  attack settings, and the file's path.
* A file that cannot be read, lacks a ``REQUIRED_KEYS`` key or has a value of the wrong type
  raises ``MetricsFileError`` (``FileNotFoundError`` when missing) naming the file and the key.
* Unknown ``method``/``train``/``finetune`` values are carried in the DataFrame; the tables and
  figures that do not use them leave them out.
* A diverged model (``diverged: true``) has null accuracies: its row carries NaN there and
  ``diverged`` True, and the tables print "diverged" instead of a number.
* A collapsed model keeps its (finite) accuracies; ``collapsed``/``collapsed_reason`` say whether and why
  the model itself collapsed, ``collapsed_upstream`` which stages of its lineage did (joined with ";",
  empty when none; ``advfine.health.model_collapse``); ``stats.collapsed_mask`` reads them.
* The attack suite's per-attack records become ``robust_acc_after_<attack>`` and
  ``broken_by_<attack>`` columns, the audit ``audit_<check>`` columns and ``audit_flags`` (the flags
  joined with ";", empty when none); a robustness curve ``robust_acc_eps_x<fraction>`` columns.
* eval.json files written before a key existed still load: missing per-stage
  ``estimated_macs``/``adversarial``/``device``/``peak_rss_mb``, ``attack.eps_space``/``eps_pixel``
  and the top-level ``latency_*``/``peak_rss_mb``/``precision``/``int8`` become NaN/NA, and the
  cells that need them n/a.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from ..files import write_text
from ..vocab import ATTACKS, AUDIT_CHECKS

# The stages of a model's lineage, in order (an eval.json may list others too).
STANDARD_STAGES = ["train_base", "compress", "finetune"]
# Per-stage columns "<stage>_<field>" taken from each entry of eval.json's "stages".
STAGE_FIELDS = ["wall_time_s", "estimated_macs", "adversarial", "device", "peak_rss_mb"]

# Top-level keys every eval.json must have, with the accepted Python types.
_NUM = (int, float)
REQUIRED_KEYS: dict[str, tuple[type, ...]] = {
    "experiment": (str,),
    "dataset": (str,),
    "arch": (str,),
    "seed": (int,),
    "train": (str,),
    "compression": (str,),
    "method": (str,),
    "level": (int, float, type(None)),
    "finetune": (str,),
    "clean_acc": _NUM + (type(None),),  # null only for a diverged model
    "robust_acc": _NUM + (type(None),),
    "n_test": (int,),
    "params": (int,),
    "macs": (int,),
    "checkpoint_bytes": (int,),
    "weight_bytes": (int,),
    "device": (str,),
    "eval_wall_time_s": _NUM,
    "stages": (list,),
    "provenance": (dict,),
    "attack": (dict,),
}

# Columns copied verbatim from the top level of eval.json, in DataFrame order.
_FLAT_COLS = [
    "experiment", "dataset", "arch", "seed", "train", "compression", "method", "level",
    "finetune", "clean_acc", "robust_acc", "n_test", "params", "macs", "checkpoint_bytes",
    "weight_bytes", "device", "eval_wall_time_s",
]
# Optional top-level keys (eval.json files written before them lack them; null = not measured):
# column -> (key path in eval.json, kind). Kinds: "number" (>= 0), "fraction" (in [0, 1]),
# "count" (int >= 1), "bytes" (int >= 0), "str", "bool". Objects on the path may be null or absent.
OPTIONAL_KEYS: dict[str, tuple[tuple[str, ...], str]] = {
    "diverged": (("diverged",), "bool"),
    "collapsed": (("collapsed",), "bool"),
    "collapsed_reason": (("collapsed_reason",), "str"),
    "constant_predictions": (("constant_predictions",), "str"),
    "robust_acc_pgd": (("robust_acc_pgd",), "fraction"),
    "robust_acc_whitebox": (("robust_acc_whitebox",), "fraction"),
    **{f"robust_acc_after_{a}": (("attacks", a, "robust_acc_after"), "fraction") for a in ATTACKS},
    **{f"broken_by_{a}": (("attacks", a, "broken"), "bytes") for a in ATTACKS},
    **{f"audit_{c}": (("audit", "checks", c), "number") for c in AUDIT_CHECKS},
    "int8_robust_acc": (("int8", "robust_acc"), "fraction"),
    "precision": (("precision",), "str"),
    "latency_ms": (("latency_ms",), "number"),
    "latency_batch": (("latency_batch",), "count"),
    "latency_threads": (("latency_threads",), "count"),
    "peak_rss_mb": (("peak_rss_mb",), "number"),
    "int8_clean_acc": (("int8", "clean_acc"), "fraction"),
    "int8_fake_quant_clean_acc": (("int8", "fake_quant_clean_acc"), "fraction"),
    "int8_agreement": (("int8", "agreement"), "fraction"),
    "int8_latency_ms": (("int8", "latency_ms"), "number"),
    "int8_model_bytes": (("int8", "model_bytes"), "bytes"),
}
_OPTIONAL_INT_COLS = [c for c, (_, kind) in OPTIONAL_KEYS.items() if kind in ("count", "bytes")]
_OPTIONAL_FLOAT_COLS = [c for c, (_, kind) in OPTIONAL_KEYS.items()
                        if kind in ("number", "fraction")]
METRIC_COLUMNS = (
    _FLAT_COLS
    + list(OPTIONAL_KEYS)
    + ["audit_flags", "collapsed_upstream"]
    + [f"{s}_{field}" for field in STAGE_FIELDS for s in STANDARD_STAGES]
    + ["git_commit", "config_hash", "attack_eps", "attack_step_size", "attack_steps",
       "attack_eps_space", "attack_eps_pixel", "attack_norm", "path"]
)
_SORT_COLS = ["experiment", "dataset", "arch", "train", "method", "level", "finetune", "seed",
              "compression"]
_KEY_COLS = ["experiment", "dataset", "arch", "train", "compression", "method", "level",
             "finetune", "seed"]


class MetricsFileError(ValueError):
    """An eval.json that cannot be read or lacks/mistypes a required key."""


# ----------------------------------------------------------------------------- collecting


def _is_number(value) -> bool:
    # bool is an int subclass; never accept it for a numeric field.
    return isinstance(value, _NUM) and not isinstance(value, bool)


def _stage_row(path: Path, i: int, st) -> dict:
    """The ``<stage>_<field>`` columns of one entry of "stages"; optional fields may be absent."""
    where = f"{path}: key 'stages'[{i}]"
    if not (isinstance(st, dict) and isinstance(st.get("stage"), str)
            and _is_number(st.get("wall_time_s"))):
        raise MetricsFileError(f"{where} must be {{'stage': str, 'wall_time_s': number, ...}}")
    macs, adversarial, device = st.get("estimated_macs"), st.get("adversarial"), st.get("device")
    peak = st.get("peak_rss_mb")
    if macs is not None and not _is_number(macs):
        raise MetricsFileError(f"{where}: 'estimated_macs' must be a number, got {macs!r}")
    if peak is not None and not (_is_number(peak) and peak >= 0):
        raise MetricsFileError(f"{where}: 'peak_rss_mb' must be a number >= 0, got {peak!r}")
    if adversarial is not None and not isinstance(adversarial, bool):
        raise MetricsFileError(f"{where}: 'adversarial' must be true or false, got {adversarial!r}")
    if device is not None and not isinstance(device, str):
        raise MetricsFileError(f"{where}: 'device' must be a string, got {device!r}")
    name = st["stage"]
    return {f"{name}_wall_time_s": float(st["wall_time_s"]),
            f"{name}_estimated_macs": math.nan if macs is None else float(macs),
            f"{name}_adversarial": adversarial,
            f"{name}_device": device,
            f"{name}_peak_rss_mb": math.nan if peak is None else float(peak)}


_KIND_TEXT = {"number": "a number >= 0", "fraction": "a fraction in [0, 1]",
              "count": "an integer >= 1", "bytes": "an integer >= 0", "str": "a string", "bool": "true or false"}


def _kind_ok(value, kind: str) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind in ("count", "bytes"):
        return (isinstance(value, int) and not isinstance(value, bool)
                and value >= (1 if kind == "count" else 0))
    if not _is_number(value) or math.isnan(value):
        return False
    return value >= 0 and (kind != "fraction" or value <= 1)


def _optional_row(path: Path, rec: dict) -> dict:
    """The ``OPTIONAL_KEYS`` columns of one eval.json: None where a key is absent or null; a value
    of the wrong type (or out of range) raises MetricsFileError naming the file and the key."""
    row = {}
    for col, (keys, kind) in OPTIONAL_KEYS.items():
        value = rec
        for depth, key in enumerate(keys):
            if value is not None and not isinstance(value, dict):
                raise MetricsFileError(f"{path}: key '{'.'.join(keys[:depth])}' has type "
                                       f"{type(value).__name__}, expected object or null")
            value = None if value is None else value.get(key)
        if value is not None and not _kind_ok(value, kind):
            raise MetricsFileError(f"{path}: key '{'.'.join(keys)}' must be {_KIND_TEXT[kind]} or "
                                   f"null, got {value!r} ({type(value).__name__})")
        row[col] = value
    return row


def _audit_flags(path: Path, rec: dict) -> str | None:
    """The audit's flags joined with ";" ("" when it raised none), None when the file has no audit."""
    audit = rec.get("audit")
    if audit is None:
        return None
    flags = audit.get("flags") if isinstance(audit, dict) else None
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise MetricsFileError(f"{path}: key 'audit.flags' must be a list of strings")
    return ";".join(flags)


def _collapsed_upstream(path: Path, rec: dict) -> str | None:
    """The stages of the lineage whose model collapsed, joined with ";" ("" when none), None when the file
    predates the key."""
    stages = rec.get("collapsed_upstream")
    if stages is None:
        return None
    if not isinstance(stages, list) or not all(isinstance(s, str) for s in stages):
        raise MetricsFileError(f"{path}: key 'collapsed_upstream' must be a list of stage names")
    return ";".join(stages)


def _curve_row(path: Path, rec: dict) -> dict:
    """``robust_acc_eps_x<fraction>`` columns from the robustness curve (none when it has none)."""
    curve = rec.get("robustness_curve")
    if curve is None:
        return {}
    row = {}
    for point in curve if isinstance(curve, list) else [None]:
        if not (isinstance(point, dict) and _kind_ok(point.get("eps_fraction"), "number")
                and _kind_ok(point.get("robust_acc"), "fraction")):
            raise MetricsFileError(f"{path}: key 'robustness_curve' must be a list of "
                                   "{'eps_fraction': number, 'robust_acc': fraction, ...}")
        row[f"robust_acc_eps_x{point['eps_fraction']:g}"] = float(point["robust_acc"])
    return row


def _load_one(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"eval file not found: {path}")
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MetricsFileError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(rec, dict):
        raise MetricsFileError(f"{path}: top level must be a JSON object, got {type(rec).__name__}")

    for key, types in REQUIRED_KEYS.items():
        if key not in rec:
            raise MetricsFileError(f"{path}: missing required key '{key}'")
        val = rec[key]
        if isinstance(val, bool) or not isinstance(val, types):
            raise MetricsFileError(
                f"{path}: key '{key}' has type {type(val).__name__}, expected "
                + " or ".join("null" if t is type(None) else t.__name__ for t in types))
    for key in ("clean_acc", "robust_acc"):
        if rec[key] is None and rec.get("diverged") is not True:
            raise MetricsFileError(f"{path}: key '{key}' is null but the model is not marked diverged")
        if rec[key] is not None and not 0.0 <= float(rec[key]) <= 1.0:
            raise MetricsFileError(f"{path}: key '{key}' = {rec[key]} is not a fraction in [0, 1]")

    row = {k: rec[k] for k in _FLAT_COLS}
    row["level"] = math.nan if rec["level"] is None else float(rec["level"])
    row.update(_optional_row(path, rec))
    row["audit_flags"] = _audit_flags(path, rec)
    row["collapsed_upstream"] = _collapsed_upstream(path, rec)
    row.update(_curve_row(path, rec))
    seen: set[str] = set()
    for i, st in enumerate(rec["stages"]):
        stage_cols = _stage_row(path, i, st)
        if st["stage"] in seen:
            raise MetricsFileError(f"{path}: key 'stages' lists stage '{st['stage']}' twice")
        seen.add(st["stage"])
        row.update(stage_cols)
    prov, attack = rec["provenance"], rec["attack"]
    row["git_commit"] = prov.get("git_commit")
    row["config_hash"] = prov.get("config_hash")
    row["attack_eps"] = attack.get("eps")
    row["attack_step_size"] = attack.get("step_size")
    row["attack_steps"] = attack.get("steps")
    row["attack_eps_space"] = attack.get("eps_space")
    row["attack_eps_pixel"] = attack.get("eps_pixel")
    row["attack_norm"] = attack.get("norm", "linf")  # files written before attack.norm existed: L-inf
    row["path"] = str(path)
    return row


def collect_metrics(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Read eval.json files into one DataFrame, one row per file.

    Columns: ``METRIC_COLUMNS`` (+ ``<stage>_<field>`` for any non-standard stage). Per stage:
    ``_wall_time_s``, ``_estimated_macs`` and ``_peak_rss_mb`` (float, NaN when the stage is not
    in the model's lineage or the file predates the key), ``_adversarial`` (nullable boolean),
    ``_device``. The evaluation's ``OPTIONAL_KEYS`` (``latency_ms``, ``peak_rss_mb``, ``int8_*``
    ...) are float, or nullable Int64 for ``latency_batch``/``latency_threads``/
    ``int8_model_bytes``; NaN/NA where the file lacks them (``int8_*``: every node but PTQ INT8).
    Rows are sorted by experiment, dataset, arch, train, method, level, finetune, seed.
    Raises ``FileNotFoundError`` / ``MetricsFileError`` naming the offending file (and key), and
    ``MetricsFileError`` if two files describe the same model (same key columns and seed).
    """
    rows = [_load_one(Path(p)) for p in paths]
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
        elif (col.endswith(("_wall_time_s", "_estimated_macs", "_peak_rss_mb"))
              or col.startswith("robust_acc_eps_x")
              or col in ("attack_eps_pixel", "clean_acc", "robust_acc", *_OPTIONAL_FLOAT_COLS)):
            df[col] = df[col].astype(float)
        elif col in _OPTIONAL_INT_COLS:
            df[col] = df[col].astype("Int64")
    df = df.sort_values(_SORT_COLS, na_position="first", kind="mergesort")
    return df.reset_index(drop=True)


def write_metrics_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """The flat per-model DataFrame from ``collect_metrics`` as CSV (atomically)."""
    path = Path(path)
    write_text(path, df.to_csv(index=False, lineterminator="\n"))
    return path
