"""The cost ledger: each stage's wall, CPU and GPU time, training MACs and energy (``pipeline.meter``), summed in
one place (``records.Cost``) into an evaluated node's cost to obtain, and carried into all_metrics.csv."""
import builtins
import math
import sys
import time
import types
from dataclasses import replace
from types import SimpleNamespace

import pytest

from advfine.core.cost import step_passes, training_macs
from advfine.core.objectives import TradesObjective
from advfine.pipeline import meter
from advfine.pipeline.records import Cost, lineage_cost, read_eval_record, read_stage_record
from advfine.report.collect import collect_metrics
from advfine.stages import compress, evaluate, finetune, prepare_data, train_base

from conftest import stage_settings
from record_factory import eval_record, lineage_entry

SMALL = {"data.train_subset": 128, "data.test_subset": 32, "train.epochs": 1, "train.lr_drop_epoch": None}


def no_zeus(monkeypatch):
    """Zeus cannot be imported, installed or not (on a machine where a counter may be read)."""
    monkeypatch.setattr(meter, "no_counters", lambda device: None)
    real_import = builtins.__import__

    def fail(name, *args, **kwargs):
        if name == "zeus" or name.startswith("zeus."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fail)


def fake_zeus(monkeypatch, measurement):
    """A Zeus whose monitor's every window measured ``measurement``; returns the gpu_indices it was given."""
    seen = {}
    monkeypatch.setattr(meter, "no_counters", lambda device: None)

    class ZeusMonitor:
        def __init__(self, gpu_indices=None, cpu_indices=None):
            seen["gpu_indices"] = gpu_indices

        def begin_window(self, key, sync_execution=True):
            pass

        def end_window(self, key, sync_execution=True):
            return measurement

    monitor = types.ModuleType("zeus.monitor")
    monitor.ZeusMonitor = ZeusMonitor
    monkeypatch.setitem(sys.modules, "zeus", types.ModuleType("zeus"))
    monkeypatch.setitem(sys.modules, "zeus.monitor", monitor)
    return seen


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """A tiny node made and evaluated by the stage functions the workflow runs: base -> prune-0.5 -> ft-ad,
    with Zeus absent (the ledger must work without it)."""
    with pytest.MonkeyPatch.context() as mp:
        no_zeus(mp)
        d = tmp_path_factory.mktemp("ledger")
        data = d / "digits.pt"
        prepare_data.run(stage_settings("prepare_data", **SMALL), out_data=data)
        train_base.run(stage_settings("train_base", **SMALL), data=data, train="st", seed=0,
                       out_model=d / "base.pt", out_metrics=d / "base.json")
        compress.run(stage_settings("compress", **SMALL), data=data, compression="prune-0.5", seed=0,
                     model=d / "base.pt", metrics=d / "base.json", out_model=d / "prune.pt",
                     out_metrics=d / "prune.json")
        finetune.run(stage_settings("finetune", **SMALL), data=data, compression="prune-0.5", mode="ad", seed=0,
                     model=d / "prune.pt", metrics=d / "prune.json", out_model=d / "ft.pt", out_metrics=d / "ft.json")
        evaluate.run(stage_settings("evaluate", **SMALL), data=data, experiment="tiny", train="st",
                     compression="prune-0.5", finetune="ad", seed=0, model=d / "ft.pt", metrics=d / "ft.json",
                     out_eval=d / "eval.json", out_samples=d / "samples.csv")
    return d


def test_the_cost_to_obtain_is_the_sum_of_the_lineage_with_the_base_once(node):
    record = read_eval_record(node / "eval.json")
    assert [st.stage for st in record.stages] == ["train_base", "compress", "finetune"]
    base, pruned = read_stage_record(node / "base.json"), read_stage_record(node / "prune.json")
    assert record.stages[0] == base.stages[0] == pruned.stages[0]  # one base entry, handed down
    total = record.cost_to_obtain
    for key in ("wall_time_s", "cpu_time_s"):
        assert getattr(total, key) == pytest.approx(sum(getattr(st, key) for st in record.stages))
    assert total.train_macs == sum(st.estimated_macs for st in record.stages)
    assert total == lineage_cost(record.stages) and total.gpu_time_s is None  # on the CPU: no GPU time
    # the evaluation's own cost is not part of the cost to obtain
    assert record.eval_cost.cpu_time_s > 0 and record.eval_cost.train_macs == 0


def test_each_stage_records_its_cpu_time_within_its_wall_time(node):
    """Tests run one torch thread (conftest): a stage's CPU seconds lie in (0, wall x threads], up to the
    interpreter's own helper threads and the clocks' grain."""
    record = read_eval_record(node / "eval.json")
    for cost in [st.cost for st in record.stages] + [record.eval_cost]:
        assert 0 < cost.cpu_time_s <= 1.5 * cost.wall_time_s + 0.05, cost


def test_an_absent_energy_backend_leaves_energy_null_saying_why(node):
    record = read_eval_record(node / "eval.json")
    for st in record.stages:
        assert st.energy_j is None and st.energy_method.startswith("none: zeus is not installed")
    assert record.eval_cost.energy_j is None and "zeus is not installed" in record.eval_cost.energy_method
    assert record.cost_to_obtain.energy_j is None
    assert record.cost_to_obtain.energy_method.startswith("none: zeus is not installed")  # named once
    assert " + " not in record.cost_to_obtain.energy_method
    raw = (node / "base.json").read_text()
    assert '"gpu_time_s"' not in raw and '"energy_j": null' in raw  # GPU time omitted off CUDA, energy null


def test_all_metrics_carries_the_cost_to_obtain_and_the_evaluation_cost(node):
    row = collect_metrics([node / "eval.json"]).iloc[0]
    record = read_eval_record(node / "eval.json")
    assert row["obtain_cpu_h"] == pytest.approx(record.cost_to_obtain.cpu_time_s / 3600)
    assert row["obtain_train_macs"] == record.cost_to_obtain.train_macs > 0
    assert math.isnan(row["obtain_energy_j"]) and row["obtain_energy_method"].startswith("none: zeus")
    assert math.isnan(row["obtain_gpu_h"]) and row["eval_cpu_h"] == pytest.approx(record.eval_cost.cpu_time_s / 3600)


def test_a_measured_energy_is_summed_and_named(monkeypatch):
    measured = SimpleNamespace(time=1.0, gpu_energy={0: 12.0}, cpu_energy={0: 30.0}, dram_energy={0: 3.0})
    seen = fake_zeus(monkeypatch, measured)
    cost = meter.Meter("cpu").start().stop()
    assert seen["gpu_indices"] == []  # a CPU stage meters no GPU
    assert cost.energy_j == 45.0 and cost.energy_method == "measured: zeus, NVML (GPU 0) and RAPL (CPU package 0; DRAM)"
    assert cost.gpu_time_s is None and cost.train_macs == 0


def test_zeus_without_counters_or_failing_leaves_energy_null(monkeypatch):
    fake_zeus(monkeypatch, SimpleNamespace(time=1.0, gpu_energy={}, cpu_energy=None, dram_energy=None))
    cost = meter.Meter("cpu").start().stop()
    assert cost.energy_j is None
    assert cost.energy_method == "none: zeus found neither NVML nor readable RAPL counters here"

    class Broken:
        def __init__(self, **_):
            raise RuntimeError("NVML went away")

    sys.modules["zeus.monitor"].ZeusMonitor = Broken
    cost = meter.Meter("cpu").start().stop()
    assert cost.energy_j is None and cost.energy_method == "none: zeus could not start (RuntimeError: NVML went away)"


def test_without_gpu_or_rapl_counters_zeus_is_not_imported(monkeypatch, tmp_path):
    monkeypatch.setattr(meter, "POWERCAP", tmp_path)  # no intel-rapl* entries
    monkeypatch.setitem(sys.modules, "zeus.monitor", None)  # importing it would fail the test
    cost = meter.Meter("cpu").start().stop()
    assert cost.energy_j is None and cost.energy_method == (
        f"none: no GPU and no RAPL counters under {tmp_path} (zeus not consulted)")
    (tmp_path / "intel-rapl:0").mkdir()  # a counter that may be read: zeus is consulted (and here fails to import)
    assert "zeus is not installed" in meter.Meter("cpu").start().stop().energy_method


def test_the_installed_zeus_measures_or_says_why_not():
    """Whatever this machine has (no RAPL, no GPU here: nothing to read), the real library never fails a stage."""
    pytest.importorskip("zeus.monitor")
    start = time.process_time()
    while time.process_time() - start < 0.05:
        pass
    cost = meter.Meter("cpu").start().stop()
    assert (cost.energy_j is None) == cost.energy_method.startswith("none: ")
    assert cost.energy_j is not None or "zeus" in cost.energy_method


def test_costs_sum_in_one_place():
    a = Cost(wall_time_s=10.0, cpu_time_s=9.0, gpu_time_s=None, train_macs=100, energy_j=50.0,
             energy_method="measured: zeus, RAPL (CPU package 0)")
    b = Cost(wall_time_s=5.0, cpu_time_s=4.0, gpu_time_s=3.0, train_macs=20, energy_j=7.0,
             energy_method="measured: zeus, NVML (GPU 0)")
    s = a + b
    assert (s.wall_time_s, s.cpu_time_s, s.gpu_time_s, s.train_macs, s.energy_j) == (15.0, 13.0, 3.0, 120, 57.0)
    assert s.energy_method == "measured: zeus, RAPL (CPU package 0) + measured: zeus, NVML (GPU 0)"
    assert a + a == replace(a, wall_time_s=20.0, cpu_time_s=18.0, train_macs=200, energy_j=100.0)  # method once
    unknown = replace(b, energy_j=None, energy_method="none: zeus is not installed")
    assert (a + unknown).energy_j is None  # a total never passes an unmeasured part for zero
    assert Cost.total([]) == Cost.zero() and Cost.zero() + a == a
    stages = [lineage_entry("train_base", wall_time_s=100.0, cpu_time_s=90.0, estimated_macs=1e12, energy_j=9.0,
                            energy_method="m"),
              lineage_entry("finetune", wall_time_s=10.0, cpu_time_s=9.0, estimated_macs=1e11, energy_j=1.0,
                            energy_method="m")]
    assert lineage_cost(stages) == Cost(110.0, 99.0, None, 1.1e12, 10.0, "m")
    assert eval_record(stages=stages).cost_to_obtain == lineage_cost(stages)


def test_a_resumed_stage_counts_the_restored_epochs_and_says_its_energy_is_incomplete():
    history = [{"wall_time_s": 4.0, "cpu_time_s": 3.5, "restored": True}, {"wall_time_s": 2.0, "cpu_time_s": 1.0}]
    restored = meter.restored_cost(history)
    assert (restored.wall_time_s, restored.cpu_time_s, restored.energy_j) == (4.0, 3.5, None)
    assert restored.energy_method == "none: 1 epoch(s) restored from an interrupted attempt were not metered"
    assert meter.restored_cost(history[1:]) == Cost.zero()


def test_training_compute_counts_attack_steps_trades_and_calibration():
    pgd = SimpleNamespace(steps=5)
    assert training_macs([{"eps": 0.0}, {"eps": 0.1}], 10, 100, pgd) == 10 * 100 * (3 + 13)  # warm-up epoch clean
    assert training_macs([{"eps": 0.1}], 10, 100, None) == 10 * 100 * 3
    trades = TradesObjective(inner=SimpleNamespace(steps=5), beta=6.0)
    # TRADES: a clean pass, 5 attack steps, then training on the clean and the perturbed batch
    assert step_passes(5, trades=True) == 1 + 2 * 5 + 2 * 3
    assert training_macs([{"eps": 0.1}], 10, 100, trades) == 10 * 100 * 17
    assert training_macs([{"eps": 0.0}], 10, 100, None, calibration_images=64) == 10 * 100 * 3 + 64 * 100
