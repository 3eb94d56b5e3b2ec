"""The health of a run's models, from their records: whether an evaluated model counts as collapsed given
its lineage (``model_collapse``), and the end-of-run banner that lists every collapsed or diverged model
(``announce_health``).

Every training stage's metrics.json and its entry in the lineage ``stages`` carry ``collapsed``/
``collapsed_reason`` (``advfine.core.health.collapse_record``); an eval.json carries them for the evaluated
model itself and ``collapsed_upstream``, the earlier stages of its lineage whose training collapsed. A node
built on a collapsed model carries that mark: its numbers are kept but never averaged. ``health_banner``
reads these records back from a run's results folder.

No torch import: the workflow's end-of-run handlers run it.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from advfine.core.health import prediction_collapse
from advfine.pipeline.records import EvalRecord, LineageEntry, read_eval_record, read_stage_record

R = TypeVar("R")


def model_collapse(stages: Sequence[LineageEntry], predictions: Iterable[int] | None, num_classes: int,
                   trained: bool = True) -> dict:
    """The collapse keys of an eval.json. ``stages``: the evaluated model's lineage (oldest first, the
    stage that made it last); ``predictions``: its predicted classes on the test set (None for a
    diverged model); ``trained``: whether the stage that made it trained it (train_base, finetune, QAT).
    ``collapsed``/``collapsed_reason``: a training outcome, of the model's own training (its stage's
    record) or of its predictions when its stage trained it; ``collapsed_upstream``: the earlier stages
    whose training collapsed. ``constant_predictions``: why a model its stage did not train (pruned or PTQ
    without fine-tuning) predicts (nearly) one class.
    That is a measurement, the paper's "pruning without fine-tuning destroys accuracy", not a failed
    recipe: its numbers are kept and averaged."""
    *earlier, own = stages
    constant = None if predictions is None else prediction_collapse(predictions, num_classes)
    reasons = [own.collapsed_reason if own.collapsed else None, constant if trained else None]
    reasons = [r for r in reasons if r]
    return {"collapsed": bool(reasons), "collapsed_reason": "; ".join(reasons) or None,
            "collapsed_upstream": [st.stage for st in earlier if st.collapsed],
            "constant_predictions": None if trained else constant}


# ----------------------------------------------------------------------------- end-of-run banner


@dataclass(frozen=True)
class UnhealthyModel:
    """A model of a run that collapsed or diverged: its folder (where model.pt lies), the stage that
    made it, why, and how many evaluated nodes built on it carry its mark."""

    outcome: str  # "collapsed" or "diverged"
    folder: Path
    stage: str
    reason: str
    built_on: int


def _records(results: Path, name: str, read: Callable[[Path], R]) -> list[tuple[Path, R]]:
    """(file, record) of every readable ``name`` under ``results``; a file being written, broken or of another
    format is skipped (the banner runs after failed runs too and must never fail itself)."""
    found = []
    for path in sorted(results.rglob(name)):
        try:
            found.append((path, read(path)))
        except (OSError, ValueError):
            continue
    return found


def unhealthy_models(results: str | Path) -> list[UnhealthyModel]:
    """Every model under ``results`` (one experiment's folder) that collapsed (in training, by its
    metrics.json; or by its predictions, by its eval.json) or diverged (by its eval.json), with the
    evaluated nodes built on it that carry its mark (``collapsed_upstream`` names its stage; a node
    under a diverged model that diverged too). Sorted by folder."""
    results = Path(results)
    evals = [(Path(rec.model_path).resolve().parent, rec)
             for path, rec in _records(results, "eval.json", read_eval_record)]
    found: dict[tuple[Path, str], tuple[str, str]] = {}
    for path, stage_rec in _records(results, "metrics.json", read_stage_record):
        if stage_rec.collapsed:
            found[path.parent.resolve(), "collapsed"] = (stage_rec.stage, str(stage_rec.collapsed_reason))
    for folder, rec in evals:
        stage = rec.stages[-1].stage
        if rec.diverged:
            found[folder, "diverged"] = (stage, str(rec.diverged_reason))
        elif rec.collapsed and (folder, "collapsed") not in found:
            found[folder, "collapsed"] = (stage, str(rec.collapsed_reason))

    for folder, outcome in list(found):  # a training loss gone non-finite is a divergence: say it once
        if outcome == "collapsed" and (folder, "diverged") in found:
            del found[folder, outcome]

    def carries_mark(rec: EvalRecord, outcome: str, stage: str) -> bool:
        return rec.diverged if outcome == "diverged" else stage in rec.collapsed_upstream

    models = []
    for (folder, outcome), (stage, reason) in found.items():
        built_on = sum(1 for node, rec in evals
                       if folder in node.parents and carries_mark(rec, outcome, stage))
        models.append(UnhealthyModel(outcome, folder, stage, reason, built_on))
    return sorted(models, key=lambda m: (str(m.folder), m.outcome))


def health_banner(results: str | Path) -> str:
    """A banner naming every collapsed or diverged model under ``results`` (see ``unhealthy_models``);
    "" when there is none."""
    models = unhealthy_models(results)
    if not models:
        return ""
    rule = "=" * 100
    lines = [rule, f"TRAINING HEALTH: {len(models)} model(s) under {results} collapsed or diverged; they and the "
                   "nodes built on them are reported as such, never averaged"]
    for m in models:
        try:
            where = m.folder.relative_to(Path.cwd())
        except ValueError:
            where = m.folder
        lines.append(f"  {m.outcome.upper():9} {where} (stage {m.stage}): {m.reason}")
        lines.append(f"  {'':9} evaluated nodes built on it that carry the mark: {m.built_on}")
    lines.append(rule)
    return "\n".join(lines)


def announce_health(results: str | Path, stream=None) -> str:
    """Print ``health_banner(results)`` to ``stream`` (stderr) when it is not empty; returns it. The
    workflow's ``onsuccess`` and ``onerror`` handlers call this."""
    banner = health_banner(results)
    if banner:
        print(banner, file=stream or sys.stderr, flush=True)
    return banner
