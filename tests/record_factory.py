"""Valid result records with made-up numbers for tests of their readers (report, health banner): override
what a test is about, the rest is a healthy, plausible default."""
from __future__ import annotations

from advfine.pipeline.records import Cost, EvalRecord, LineageEntry, StageRecord, lineage_cost


def lineage_entry(stage: str, **over) -> LineageEntry:
    values = {"stage": stage, "wall_time_s": 1.0, "estimated_macs": 0, "adversarial": False, "device": "cpu",
              "peak_rss_mb": 100.0, "collapsed": False, "collapsed_reason": None, "cpu_time_s": 0.9,
              "energy_j": None, "energy_method": "none: zeus is not installed"}
    return LineageEntry(**values | over)


def stage_record(stage: str, lineage: list[str], **over) -> StageRecord:
    """The metrics.json of ``stage``, last of ``lineage`` (stage names, oldest first)."""
    values = {"stage": stage, "wall_time_s": 1.0, "stages": [lineage_entry(s) for s in lineage],
              "collapsed": False, "collapsed_reason": None, "peak_rss_mb": 100.0,
              "provenance": {"config_hash": "abc123", "git_commit": "deadbeef"}, "details": {}}
    return StageRecord(**values | over)


def eval_values(**over) -> dict:
    """The fields of a healthy evaluated node (an ``EvalRecord``'s keyword arguments), with ``over``; its
    cost to obtain is its lineage's unless ``over`` says otherwise."""
    values = {
        "experiment": "exp", "dataset": "fashion_mnist", "arch": "cnn8", "seed": 0, "train": "st",
        "compression": "dense", "method": "dense", "level": None, "finetune": "none",
        "clean_acc": 0.9, "robust_acc": 0.1, "robust_acc_pgd": None, "robust_acc_whitebox": None,
        "n_test": 10000, "precision": "fp32",
        "attack": {"eps": 0.1, "step_size": 0.01, "steps": 40, "eps_space": "pixel", "eps_pixel": 0.1,
                   "norm": "linf"},
        "suite": {}, "attacks": {}, "attack_order": [], "audit": None, "robustness_curve": None,
        "diverged": False, "diverged_reason": None, "collapsed": False, "collapsed_reason": None,
        "collapsed_upstream": [], "constant_predictions": None,
        "params": 1000, "macs": 5000, "checkpoint_bytes": 4000, "weight_bytes": 3000,
        "int8": None, "escalation": None,
        "device": "cpu", "eval_wall_time_s": 1.5, "stages": [lineage_entry("train_base")],
        "model_path": "model.pt", "peak_rss_mb": None,
        "eval_cost": Cost(wall_time_s=2.0, cpu_time_s=1.8, gpu_time_s=None, train_macs=0, energy_j=None,
                          energy_method="none: zeus is not installed"),
        "provenance": {"config_hash": "abc123", "git_commit": "deadbeef", "versions": {}},
    }
    values |= over
    return {"cost_to_obtain": lineage_cost(values["stages"])} | values


def eval_record(**over) -> EvalRecord:
    return EvalRecord(**eval_values(**over))
