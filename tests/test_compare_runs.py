"""benchmarks/compare_runs.py: two runs are the same measurement when everything but timing agrees."""
import json
import shutil
import subprocess
import sys

import pandas as pd

from conftest import REPO


def make_run(root):
    exp = root / "results" / "exp"
    node = exp / "digits-cnn8" / "seed0" / "base-st" / "dense" / "ft-none"
    node.mkdir(parents=True)
    (node / "eval.json").write_text(json.dumps({"clean_acc": 0.9, "eval_wall_time_s": 3.0, "format_version": 1,
                                                "stages": [{"stage": "train_base", "wall_time_s": 1.0}]}))
    (node / "samples.csv").write_text("index,label,clean_correct\n0,3,1\n")
    pd.DataFrame({"model": ["f_st"], "clean_acc": [0.9], "eval_wall_time_s": [3.0]}).to_csv(
        exp / "all_metrics.csv", index=False)
    (exp / "tables").mkdir()
    pd.DataFrame({"model": ["f_st"], "test": ["90.0 ± 0.0"], "latency_ms": [1.5]}).to_csv(
        exp / "tables" / "table2_baselines.csv", index=False)
    return root


def compare(a, b):
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "compare_runs.py"), str(a), str(b)],
                          capture_output=True, text=True, timeout=120)


def test_timing_differences_are_not_differences(tmp_path):
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b")
    exp = b / "results" / "exp"
    metrics = pd.read_csv(exp / "all_metrics.csv").assign(eval_wall_time_s=9.0)
    metrics.to_csv(exp / "all_metrics.csv", index=False)
    table = pd.read_csv(exp / "tables" / "table2_baselines.csv").assign(latency_ms=7.0)
    table.to_csv(exp / "tables" / "table2_baselines.csv", index=False)
    record = exp / "digits-cnn8/seed0/base-st/dense/ft-none/eval.json"
    record.write_text(record.read_text().replace('"wall_time_s": 1.0', '"wall_time_s": 5.0'))
    result = compare(a, b)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "differences: 0" in result.stdout


def test_a_changed_measurement_or_missing_file_is_reported(tmp_path):
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b")
    exp = b / "results" / "exp"
    pd.read_csv(exp / "all_metrics.csv").assign(clean_acc=0.8).to_csv(exp / "all_metrics.csv", index=False)
    (exp / "digits-cnn8/seed0/base-st/dense/ft-none/samples.csv").write_text("index,label,clean_correct\n0,3,0\n")
    shutil.copy(exp / "tables" / "table2_baselines.csv", exp / "tables" / "extra.csv")
    result = compare(a, b)
    assert result.returncode == 1
    out = result.stdout
    assert "all_metrics.csv: column clean_acc differs" in out
    assert "samples.csv: bytes differ" in out
    assert "tables/extra.csv: only in" in out
    missing = compare(a, tmp_path / "nowhere")
    assert missing.returncode == 2 and "no results folder" in missing.stderr
