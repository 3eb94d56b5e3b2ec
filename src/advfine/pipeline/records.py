"""The result files of a run, typed: ``StageRecord`` (the ``metrics.json`` beside each model.pt) and
``EvalRecord`` (each node's ``eval.json``), with ``LineageEntry``, one stage of a model's lineage, and
``Cost``, what a span of work cost (the ledger: each stage's own cost, summed here and nowhere else).

``deployment.json`` (one per experiment: every model's CPU inference cost, stage deployment) is written
by ``write_deployment_record`` and read, flat, by ``deployment_rows``.

Each file is written by one function (``write_stage_record``, ``write_eval_record``) and read by one
(``read_stage_record``, ``read_eval_record``). Every file carries ``format_version``; each reader accepts
only its record's current format (``STAGE_FORMAT_VERSION``, ``EVAL_FORMAT_VERSION``; an older file is
re-made by re-running its stage). A file that cannot be read,
lacks a key, holds a value of the wrong type, or has another ``format_version`` raises
``MetricsFileError`` (``FileNotFoundError`` when missing) naming the file and the key.

Nested structures that the stages build as plain JSON objects (the attack settings, the attack suite's
per-attack records, the audit, the robustness curve, the real INT8 model's numbers, provenance) stay
dicts; the readers check the values in them that the report reads. The readers import no torch (the
workflow's end-of-run banner reads records); the writers use ``files``, which does.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from advfine.pipeline.vocab import ATTACKS, AUDIT_CHECKS

# Each record's format, raised when its fields change: a change to one record refuses only files of that one.
STAGE_FORMAT_VERSION = 2  # 2: the cost ledger (CPU and GPU time, energy)
EVAL_FORMAT_VERSION = 4  # 2: the escalation; 3: the cost ledger; 4: latency moved to the deployment record
DEPLOYMENT_FORMAT_VERSION = 1


class MetricsFileError(ValueError):
    """A metrics.json or eval.json that cannot be read, lacks or mistypes a key, or has another format."""


def _kind(kind: str, nullable: bool = False, omitted_when_null: bool = False):
    """A field whose JSON value has ``kind`` (see ``_KIND_TEXT``); ``nullable``: null is valid;
    ``omitted_when_null``: the file has the key only when it is set (absent reads as null)."""
    metadata = {"kind": kind, "nullable": nullable or omitted_when_null, "omitted_when_null": omitted_when_null}
    return field(default=None, metadata=metadata) if omitted_when_null else field(metadata=metadata)


_KIND_TEXT = {"number": "a number >= 0", "fraction": "a fraction in [0, 1]", "int": "an integer",
              "count": "an integer >= 1", "bytes": "an integer >= 0", "str": "a string", "bool": "true or false",
              "object": "an object", "list": "a list", "strings": "a list of strings",
              "level": "a number", "lineage": "a list of stage entries", "cost": "a cost object"}


def _is_number(value) -> bool:
    # bool is an int subclass; never accept it for a numeric field.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kind_ok(value, kind: str) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind in ("object", "cost"):
        return isinstance(value, dict)
    if kind in ("list", "lineage"):
        return isinstance(value, list)
    if kind == "strings":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind in ("int", "count", "bytes"):
        is_int = isinstance(value, int) and not isinstance(value, bool)
        return is_int and (kind == "int" or value >= (1 if kind == "count" else 0))
    if not _is_number(value) or math.isnan(value):
        return False
    return kind == "level" or (value >= 0 and (kind != "fraction" or value <= 1))


def _check(path: Path, key: str, value, kind: str, nullable: bool) -> None:
    if value is None and nullable:
        return
    if not _kind_ok(value, kind):
        raise MetricsFileError(f"{path}: key '{key}' must be {_KIND_TEXT[kind]}{' or null' if nullable else ''}, "
                               f"got {value!r} ({type(value).__name__})")


def _fields_of(cls, path: Path, data: dict, where: str = "") -> dict:
    """The values of ``cls``'s fields in ``data``, each present and of its kind."""
    values = {}
    for f in fields(cls):
        if "kind" not in f.metadata:
            continue
        key = f"{where}{f.name}"
        if f.metadata["omitted_when_null"] and f.name not in data:
            continue
        if f.name not in data:
            raise MetricsFileError(f"{path}: missing required key '{key}'")
        _check(path, key, data[f.name], f.metadata["kind"], f.metadata["nullable"])
        values[f.name] = data[f.name]
    return values


def _require_keys(path: Path, name: str, obj: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        if key not in obj:
            raise MetricsFileError(f"{path}: missing required key '{name}.{key}'")


def _nested(path: Path, obj, keys: tuple[str, ...], kind: str) -> None:
    """A value inside nested objects that may be absent or null (an attack the suite did not run, the
    INT8 numbers of a node that has no real INT8 model); present, it has ``kind``."""
    value = obj
    for depth, key in enumerate(keys):
        if value is not None and not isinstance(value, dict):
            raise MetricsFileError(f"{path}: key '{'.'.join(keys[:depth])}' has type "
                                   f"{type(value).__name__}, expected object or null")
        value = None if value is None else value.get(key)
    _check(path, ".".join(keys), value, kind, nullable=True)


def _load(path: str | Path, format_version: int) -> tuple[Path, dict]:
    """The JSON object in ``path``, of format ``format_version``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"result file not found: {path}; re-run the stage that makes it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MetricsFileError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise MetricsFileError(f"{path}: top level must be a JSON object, got {type(data).__name__}")
    version = data.get("format_version")
    if type(version) is not int or version != format_version:
        raise MetricsFileError(f"{path}: key 'format_version' is {version!r}, this version of advfine reads "
                               f"format {format_version}: delete the file and re-run the stage that makes it")
    return path, data


# ----------------------------------------------------------------------------- the cost ledger


def _join_methods(*methods: str | None) -> str | None:
    parts: list[str] = []
    for method in methods:
        for part in (method or "").split(" + "):
            if part and part not in parts:
                parts.append(part)
    return " + ".join(parts) or None


@dataclass(frozen=True)
class Cost:
    """What a span of work cost: wall and process CPU seconds (user + system), GPU seconds (CUDA events
    around the work; null: no CUDA), the training compute in multiply-accumulates (forward and backward
    passes, attack steps and calibration included: ``advfine.core.cost.training_macs``), and energy in
    joules with how it was obtained (``energy_method``, e.g. "measured: NVML (GPU 0)"; energy null: not
    obtained, the method says why).

    ``+`` is the one place costs are summed: times and MACs add; GPU time adds where measured (null only
    when neither side is); energy adds when both sides have it and is null when either lacks it (a
    total without a part would pass for the whole); the methods are joined, each named once, with " + "."""

    wall_time_s: float = _kind("number")
    cpu_time_s: float = _kind("number")
    gpu_time_s: float | None = _kind("number", nullable=True)
    train_macs: float = _kind("number")
    energy_j: float | None = _kind("number", nullable=True)
    energy_method: str | None = _kind("str", nullable=True)

    @classmethod
    def zero(cls) -> "Cost":
        """Nothing spent: the neutral element of ``+``."""
        return cls(wall_time_s=0.0, cpu_time_s=0.0, gpu_time_s=None, train_macs=0, energy_j=0.0, energy_method=None)

    def __add__(self, other: "Cost") -> "Cost":
        gpu = (None if self.gpu_time_s is None and other.gpu_time_s is None
               else (self.gpu_time_s or 0.0) + (other.gpu_time_s or 0.0))
        energy = None if self.energy_j is None or other.energy_j is None else self.energy_j + other.energy_j
        return Cost(wall_time_s=self.wall_time_s + other.wall_time_s, cpu_time_s=self.cpu_time_s + other.cpu_time_s,
                    gpu_time_s=gpu, train_macs=self.train_macs + other.train_macs, energy_j=energy,
                    energy_method=_join_methods(self.energy_method, other.energy_method))

    @classmethod
    def total(cls, costs) -> "Cost":
        result = cls.zero()
        for cost in costs:
            result = result + cost
        return result


# ----------------------------------------------------------------------------- the lineage


@dataclass(frozen=True)
class LineageEntry:
    """One stage that made a model: its wall time, estimated MACs (the training compute it spent), whether
    it trained adversarially, the device, its peak memory, whether its training collapsed
    (``health.collapse_record``), and the rest of its cost: process CPU time, GPU time (CUDA only) and
    energy with its method (``cost`` reads them as a ``Cost``)."""

    stage: str = _kind("str")
    wall_time_s: float = _kind("number")
    estimated_macs: float = _kind("number")
    adversarial: bool = _kind("bool")
    device: str = _kind("str")
    peak_rss_mb: float | None = _kind("number", nullable=True)
    collapsed: bool = _kind("bool")
    collapsed_reason: str | None = _kind("str", nullable=True)
    cpu_time_s: float = _kind("number")
    energy_j: float | None = _kind("number", nullable=True)
    energy_method: str | None = _kind("str", nullable=True)
    peak_gpu_mb: float | None = _kind("number", omitted_when_null=True)  # CUDA memory; absent off CUDA
    gpu_time_s: float | None = _kind("number", omitted_when_null=True)  # CUDA events; absent off CUDA

    @property
    def cost(self) -> Cost:
        return Cost(wall_time_s=self.wall_time_s, cpu_time_s=self.cpu_time_s, gpu_time_s=self.gpu_time_s,
                    train_macs=self.estimated_macs, energy_j=self.energy_j, energy_method=self.energy_method)


def lineage_cost(stages: list[LineageEntry]) -> Cost:
    """What obtaining a model cost: the sum of its lineage's stages (base training, compression or QAT,
    fine-tuning). A base model shared by many nodes counts in full, once, in each node's cost: the cost
    of obtaining that node alone (summed over nodes, a shared base counts once per node)."""
    return Cost.total(st.cost for st in stages)


def _json_of(record) -> dict:
    """``asdict(record)`` without the ``omitted_when_null`` fields that are null, in the record and in its
    lineage entries."""
    def strip(cls, data: dict) -> dict:
        omitted = {f.name for f in fields(cls) if f.metadata.get("omitted_when_null")}
        return {k: v for k, v in data.items() if not (k in omitted and v is None)}

    data = strip(type(record), asdict(record))
    if "stages" in data:
        data["stages"] = [strip(LineageEntry, entry) for entry in data["stages"]]
    return data


def _lineage(path: Path, entries: list) -> list[LineageEntry]:
    lineage, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"stages[{i}]."
        if not isinstance(entry, dict):
            raise MetricsFileError(f"{path}: key 'stages[{i}]' must be an object, got {entry!r}")
        st = LineageEntry(**_fields_of(LineageEntry, path, entry, where))
        if st.stage in seen:
            raise MetricsFileError(f"{path}: key 'stages' lists stage '{st.stage}' twice")
        seen.add(st.stage)
        lineage.append(st)
    return lineage


# ----------------------------------------------------------------------------- metrics.json


@dataclass(frozen=True)
class StageRecord:
    """A model stage's metrics.json: the stage, its wall time, the model's lineage ``stages`` (oldest
    first, this stage last), whether its training collapsed, its peak memory and provenance; ``details``:
    the stage's own fields (its training history, attack, architecture, cost ...)."""

    stage: str = _kind("str")
    wall_time_s: float = _kind("number")
    stages: list[LineageEntry] = _kind("lineage")
    collapsed: bool = _kind("bool")
    collapsed_reason: str | None = _kind("str", nullable=True)
    peak_rss_mb: float | None = _kind("number", nullable=True)
    provenance: dict = _kind("object")
    details: dict = field(default_factory=dict)
    peak_gpu_mb: float | None = _kind("number", omitted_when_null=True)  # CUDA memory; absent off CUDA

    @property
    def trained(self) -> bool:
        """Whether the stage trained the model (train_base, finetune, QAT); pruning and PTQ train nothing."""
        return "history" in self.details

    def to_json(self) -> dict:
        """The metrics.json object: ``details`` beside the record's own keys and ``format_version``."""
        data = _json_of(self)
        details = data.pop("details")
        clash = details.keys() & (data.keys() | {"format_version"})
        if clash:
            raise ValueError(f"a stage record's details repeat its own keys: {sorted(clash)}")
        return {"format_version": STAGE_FORMAT_VERSION, **details, **data}


def write_stage_record(path: str | Path, record: StageRecord) -> None:
    # deferred: advfine.core.files imports torch; reading records (the end-of-run banner) must not
    from advfine.core.files import write_json

    write_json(path, record.to_json())


def read_stage_record(path: str | Path) -> StageRecord:
    path, data = _load(path, STAGE_FORMAT_VERSION)
    values = _fields_of(StageRecord, path, data)
    values["stages"] = _lineage(path, values["stages"])
    own = {f.name for f in fields(StageRecord)} | {"format_version"}
    return StageRecord(**values, details={k: v for k, v in data.items() if k not in own})


# ----------------------------------------------------------------------------- eval.json

ATTACK_KEYS = ("eps", "step_size", "steps", "eps_space", "eps_pixel", "norm")
PROVENANCE_KEYS = ("git_commit", "config_hash")
# Values inside the nested objects that the report reads: key path -> kind (absent or null: not measured).
EVAL_NESTED: dict[tuple[str, ...], str] = {
    **{("attacks", a, "robust_acc_after"): "fraction" for a in ATTACKS},
    **{("attacks", a, "broken"): "bytes" for a in ATTACKS},
    **{("audit", "checks", c): "number" for c in AUDIT_CHECKS},
    ("int8", "robust_acc"): "fraction",
    ("escalation", "robust_acc_before"): "fraction",
    ("int8", "clean_acc"): "fraction",
    ("int8", "fake_quant_clean_acc"): "fraction",
    ("int8", "agreement"): "fraction",
    ("int8", "robust_images"): "count",
    ("int8", "fake_quant_robust_acc"): "fraction",
}


@dataclass(frozen=True)
class EvalRecord:
    """A node's eval.json: which model (experiment ... finetune, seed), its accuracies (null only for a
    diverged model), the attack suite's records, the audit, the robustness curve (Table 5's models),
    its health, size and cost, the real INT8 model's accuracy and robustness (PTQ INT8 nodes), the
    lineage of the stages that made it, the evaluation's own cost and the cost to obtain the model (the
    lineage's, ``lineage_cost``), and provenance. Inference latency is the deployment record's."""

    experiment: str = _kind("str")
    dataset: str = _kind("str")
    arch: str = _kind("str")
    seed: int = _kind("int")
    train: str = _kind("str")
    compression: str = _kind("str")
    method: str = _kind("str")
    level: int | float | None = _kind("level", nullable=True)
    finetune: str = _kind("str")
    clean_acc: float | None = _kind("fraction", nullable=True)
    robust_acc: float | None = _kind("fraction", nullable=True)
    robust_acc_pgd: float | None = _kind("fraction", nullable=True)
    robust_acc_whitebox: float | None = _kind("fraction", nullable=True)
    n_test: int = _kind("int")
    precision: str = _kind("str")
    attack: dict = _kind("object")
    suite: dict = _kind("object")
    attacks: dict = _kind("object")
    attack_order: list = _kind("strings")
    audit: dict | None = _kind("object", nullable=True)
    robustness_curve: list | None = _kind("list", nullable=True)
    diverged: bool = _kind("bool")
    diverged_reason: str | None = _kind("str", nullable=True)
    collapsed: bool = _kind("bool")
    collapsed_reason: str | None = _kind("str", nullable=True)
    collapsed_upstream: list = _kind("strings")
    constant_predictions: str | None = _kind("str", nullable=True)
    params: int = _kind("int")
    macs: int = _kind("int")
    checkpoint_bytes: int = _kind("int")
    weight_bytes: int = _kind("int")
    int8: dict | None = _kind("object", nullable=True)
    device: str = _kind("str")
    eval_wall_time_s: float = _kind("number")
    stages: list[LineageEntry] = _kind("lineage")
    model_path: str = _kind("str")
    peak_rss_mb: float | None = _kind("number", nullable=True)
    provenance: dict = _kind("object")
    # the stronger attacks that re-attacked the node (null: nothing called for them): why, the robust accuracy
    # and audit before, and each step's settings and what it broke (advfine.core.evaluate.escalate)
    escalation: dict | None = _kind("object", nullable=True)
    # why a PTQ INT8 node has no real INT8 model (it diverged)
    # the evaluation job's own cost (attacks, audit, curve and INT8 checks: all its work after
    # loading; train_macs 0) and the cost to obtain the model: ``lineage_cost(stages)``
    eval_cost: Cost = _kind("cost")
    cost_to_obtain: Cost = _kind("cost")
    int8_skipped: str | None = _kind("str", omitted_when_null=True)
    peak_gpu_mb: float | None = _kind("number", omitted_when_null=True)  # CUDA memory; absent off CUDA

    def to_json(self) -> dict:
        """The eval.json object, with ``format_version``."""
        return {"format_version": EVAL_FORMAT_VERSION, **_json_of(self)}


def write_eval_record(path: str | Path, record: EvalRecord) -> None:
    # deferred: advfine.core.files imports torch; reading records (the end-of-run banner) must not
    from advfine.core.files import write_json

    write_json(path, record.to_json())


def read_eval_record(path: str | Path) -> EvalRecord:
    path, data = _load(path, EVAL_FORMAT_VERSION)
    values = _fields_of(EvalRecord, path, data)
    own = {f.name for f in fields(EvalRecord)} | {"format_version"}
    unknown = sorted(set(data) - own)
    if unknown:
        raise MetricsFileError(f"{path}: unknown key '{unknown[0]}'")
    for key in ("clean_acc", "robust_acc"):
        if values[key] is None and not values["diverged"]:
            raise MetricsFileError(f"{path}: key '{key}' is null but the model is not marked diverged")
    _require_keys(path, "attack", values["attack"], ATTACK_KEYS)
    _require_keys(path, "provenance", values["provenance"], PROVENANCE_KEYS)
    for keys, kind in EVAL_NESTED.items():
        _nested(path, data, keys, kind)
    if values["audit"] is not None:
        _check(path, "audit.flags", values["audit"].get("flags"), "strings", nullable=False)
    for point in values["robustness_curve"] or []:
        if not (isinstance(point, dict) and _kind_ok(point.get("eps_fraction"), "number")
                and _kind_ok(point.get("robust_acc"), "fraction")):
            raise MetricsFileError(f"{path}: key 'robustness_curve' must be a list of "
                                   "{'eps_fraction': number, 'robust_acc': fraction, ...}")
    values["stages"] = _lineage(path, values["stages"])
    for key in ("eval_cost", "cost_to_obtain"):
        values[key] = Cost(**_fields_of(Cost, path, values[key], f"{key}."))
    return EvalRecord(**values)


# ----------------------------------------------------------------------------- deployment.json

NODE_KEYS = ("experiment", "dataset", "arch", "seed", "train", "compression", "finetune")
# The models timed per node: the evaluated checkpoint as the pipeline runs it, and for PTQ INT8 nodes
# the real integer model and its float twin; their columns in deployment_rows carry these prefixes.
DEPLOYED_MODELS = {"model": "", "float_twin": "float_twin_", "int8": "int8_"}
# One timed model's values (advfine.core.cost.latency_stats and sizes): name -> kind (null: not timed).
MEASUREMENT_KEYS = {"latency_ms": "number", "latency_q1_ms": "number", "latency_q3_ms": "number",
                    "latency_iqr_ms": "number", "latency_min_ms": "number", "latency_max_ms": "number",
                    "throughput_ips": "number", "repeats": "bytes", "batch_size": "count", "threads": "count",
                    "memory_bytes": "bytes", "disk_bytes": "bytes"}


def write_deployment_record(path: str | Path, settings: dict, nodes: list[dict], provenance: dict) -> None:
    """``deployment.json``: the measurement's ``settings``, its ``provenance`` and one entry per node (its
    ``NODE_KEYS``, the checkpoint's bytes and ``models``: ``DEPLOYED_MODELS`` name -> measurement)."""
    # deferred: advfine.core.files imports torch; reading records (the end-of-run banner) must not
    from advfine.core.files import write_json

    write_json(path, {"format_version": DEPLOYMENT_FORMAT_VERSION, "settings": settings, "provenance": provenance,
                      "nodes": nodes})


def deployment_rows(path: str | Path) -> list[dict]:
    """One flat dict per node of ``deployment.json``: its ``NODE_KEYS``, ``checkpoint_bytes``, and per
    timed model (``DEPLOYED_MODELS``, by prefix) its ``MEASUREMENT_KEYS``, None where not timed. Raises
    ``MetricsFileError`` naming the file and key."""
    path, data = _load(path, DEPLOYMENT_FORMAT_VERSION)
    _check(path, "settings", data.get("settings"), "object", nullable=False)
    _check(path, "provenance", data.get("provenance"), "object", nullable=False)
    _check(path, "nodes", data.get("nodes"), "list", nullable=False)
    rows = []
    for i, node in enumerate(data["nodes"]):
        where = f"nodes[{i}]"
        _check(path, where, node, "object", nullable=False)
        row = {}
        for key in NODE_KEYS:
            if key not in node:
                raise MetricsFileError(f"{path}: missing required key '{where}.{key}'")
            _check(path, f"{where}.{key}", node[key], "int" if key == "seed" else "str", nullable=False)
            row[key] = node[key]
        _check(path, f"{where}.checkpoint_bytes", node.get("checkpoint_bytes"), "bytes", nullable=False)
        _check(path, f"{where}.models", node.get("models"), "object", nullable=False)
        row["checkpoint_bytes"] = node["checkpoint_bytes"]
        unknown = sorted(set(node["models"]) - set(DEPLOYED_MODELS))
        if unknown:
            raise MetricsFileError(f"{path}: unknown key '{where}.models.{unknown[0]}'")
        for name, prefix in DEPLOYED_MODELS.items():
            measured = node["models"].get(name) or {}
            for key, kind in MEASUREMENT_KEYS.items():
                _check(path, f"{where}.models.{name}.{key}", measured.get(key), kind, nullable=True)
                row[prefix + key] = measured.get(key)
        rows.append(row)
    return rows
