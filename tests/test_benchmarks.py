"""The benchmark scripts run and print their tables (tiny settings: this checks they work, not speed)."""
import json
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def run(script, *args):
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_int8_attack_cost_times_both_models_and_projects_the_paper_node():
    out = run("int8_attack_cost.py", "--threads", "1", "--queries", "3", "--batch", "16")
    assert "real INT8" in out and "fake-quant INT8" in out
    assert "every test image" in out and "int8_robust_images: 1000" in out


def test_training_speed_compares_four_loops_and_reports_flops_and_peak():
    out = run("training_speed.py", "--threads", "1", "--train-images", "384", "--pgd-steps", "1",
              "--test-images", "32")
    for row in ("| naive reference |", "| torchattacks PGD |", "| advfine fp32 |", "| advfine bf16 |",
                "| fp32 | ", "| bf16 | ", "| standard model (before fine-tuning) |"):
        assert row in out, out
    assert "MFLOP per image" in out


def test_compressed_speed_measures_every_model():
    out = run("compressed_speed.py", "--threads", "1", "--rounds", "1", "--batch", "8")
    for row in ("dense fp32, channels-last (baseline)", "pruned 80 % fp32", "fake-quant INT8 (torch fused kernels)",
                "real INT8 (torch.ao, oneDNN)"):
        assert row in out, out


def test_deployment_noise_times_every_model_and_judges_each_architecture():
    out = run("deployment_noise.py", "--threads", "1", "--rounds", "2", "--warmup", "0", "--batch", "8")
    for row in ("| pruned 80 % #3 |", "| dense #2 |", "| pruned 80 % | 3 | median |", "| dense | 2 | minimum |"):
        assert row in out, out


def test_fake_quant_speed_measures_every_model_and_counts_empty_cache():
    out = run("fake_quant_speed.py", "--rounds", "1", "--batch", "8", "--pgd-steps", "1")
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in out.splitlines() if line.startswith("| ")}
    for name in ("dense fp32 (baseline)", "fake-quant PTQ INT8 (ours)", "fake-quant QAT INT8 (ours)",
                 "fake-quant PTQ INT8 (NNI 3.0, before)"):
        assert name in rows, out
    assert rows["fake-quant PTQ INT8 (ours)"][3] == "0"  # no empty_cache on our hot path
    assert float(rows["fake-quant PTQ INT8 (NNI 3.0, before)"][3]) > 0  # NNI's, once per wrapped layer


def test_sync_count_finds_no_fake_quant_syncs_per_training_step():
    out = run("sync_count.py", "--threads", "1", "--batch", "4", "--pgd-steps", "2", "--device", "cpu")
    rows = {line.split(" | ")[0].strip("| "): line.strip("| ").split(" | ") for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| model")}
    assert set(rows) == {"dense fp32", "PTQ INT8", "QAT INT8", "PTQ INT4", "INT1 (binary)"}, out
    assert rows["dense fp32"][1] == "2"  # the loop's own: loss.item() and the correct count
    for name, row in rows.items():
        assert row[2] == "0" and row[1] == "2", out  # none from fake quantization (the target allows 2)
        assert row[3] == row[4] == "0", out  # eval forward, attack step
    assert int(rows["PTQ INT8"][8]) > 0  # an attack step reuses the quantized weights
    assert "target <= 2: met" in out and "on the CUDA code path" in out


def test_the_run_overhead_is_read_back_from_job_logs(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from workflow_overhead import run_overhead

    (tmp_path / "a.log").write_text("2026-12-06 07:00:00,000 INFO advfine: rule train_base, wildcards {}\n"
                                    "2026-12-06 07:01:00,000 INFO advfine: rule train_base: peak_rss_mb=1.0 "
                                    "in_process_s=58.00\n")
    (tmp_path / "b.log").write_text("2026-12-06 07:00:30,000 INFO advfine: rule evaluate, wildcards {}\n"
                                    "2026-12-06 07:02:00,000 INFO advfine: rule evaluate: peak_rss_mb=1.0 "
                                    "in_process_s=88.00\n")
    assert run_overhead(tmp_path, 2) == (2, 120.0, 146.0)


def test_peak_memory_is_read_back_from_job_logs(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from workflow_overhead import peak_memory_by_rule

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "train.log").write_text("x\nINFO advfine: rule train_base: peak_rss_mb=700.5\n"
                                              "INFO advfine: rule train_base: peak_rss_mb=812.0\n")
    (tmp_path / "evaluate.log").write_text("INFO advfine: rule evaluate: peak_rss_mb=1300.0\n")
    (tmp_path / "other.log").write_text("no peak here\n")
    assert peak_memory_by_rule(tmp_path) == {"train_base": [812.0], "evaluate": [1300.0]}  # last run counts


def test_gpu_check_says_when_there_is_no_gpu_and_its_checks_pass_on_the_cpu(tmp_path):
    import torch

    if not torch.cuda.is_available():
        assert "no CUDA device here" in run("gpu_check.py")
    out = tmp_path / "gpu_check.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--cpu", "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    report = json.loads(out.read_text())
    assert {"torch", "cuda", "gpu", "capability", "driver", "checks", "timings", "total_s"} <= report.keys()
    assert report["cpu_mode"] and report["device"] == "cpu"
    statuses = {check["name"]: check["status"] for check in report["checks"]}
    for check in report["checks"]:
        assert check.keys() == {"name", "status", "detail", "seconds"}
        assert check["status"] in ("PASS", "FAIL", "SKIP", "INFO")
        assert f"{check['status']} {check['name']}: {check['detail']}" in result.stdout
    assert "FAIL" not in statuses.values(), result.stdout
    assert result.returncode == 0, result.stderr[-3000:]
    # what --cpu can run ran (pruning needs NNI), and the GPU-only halves say why they did not
    ran = ["stage prepare_data", "stage train_base rb", "stage compress ptq-int8", "stage qat int8",
           "stage finetune ptq-int8 ad", "stage evaluate ptq-int8 ad",
           "determinism: two identical trainings are bitwise equal",
           "resume: interrupted after epoch 1 and resumed equals uninterrupted",
           "GPU pool: two processes, fake GPU id 0 (--cpu)"]
    ran += [f"attack {attack} {norm} {precision}" for attack in ("pgd", "apgd_ce", "apgd_t", "fab_t", "transfer",
                                                                 "square")
            for norm in ("linf", "l2") for precision in ("fp32", "bf16")]
    assert all(statuses[name] in ("PASS", "FAIL") for name in ran), statuses
    for name in ("resume: written on cuda, resumed on cpu", "CPU vs GPU logits, TF32 off",
                 "CUDA memory: repeated evaluations return to the baseline"):
        assert statuses[name] == "SKIP"
    assert "timing dense fp32" in report["timings"] and "syncs per step" in report["timings"]


def test_evaluation_summary_groups_nodes_by_type(tmp_path):
    def record(method, level, pgd, worst):
        return {"method": method, "level": level, "diverged": False, "robust_acc_pgd": pgd, "robust_acc": worst,
                "attack_order": ["pgd", "apgd_ce"], "eval_wall_time_s": 10.0, "audit": {"flags": ["more_effort_gain"]},
                "attacks": {"pgd": {"robust_acc_after": pgd, "wall_time_s": 4.0},
                            "apgd_ce": {"robust_acc_after": worst, "wall_time_s": 6.0}}}
    for i, rec in enumerate([record("dense", None, 0.5, 0.4), record("ptq", 4, 0.6, 0.3)]):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "eval.json").write_text(json.dumps(rec))
    out = run("evaluation_summary.py", str(tmp_path))
    assert "| dense | 1 | 0 | 50.0 | 40.0 |" in out and "| ptq INT4 | 1 | 0 | 60.0 | 30.0 |" in out
    assert "apgd_ce 30.00" in out and "Evaluation seconds in all: 20" in out


def test_evaluation_summary_says_what_the_escalation_did(tmp_path):
    base = {"method": "ptq", "level": 4, "diverged": False, "robust_acc_pgd": 0.6, "attack_order": ["pgd"],
            "eval_wall_time_s": 40.0, "attacks": {"pgd": {"robust_acc_after": 0.5, "wall_time_s": 4.0}}}
    escalated = base | {"robust_acc": 0.3, "audit": {"flags": ["more_effort_gain"]},
                        "escalation": {"robust_acc_before": 0.5, "steps": [{"wall_time_s": 30.0}]}}
    for i, rec in enumerate([escalated, base | {"robust_acc": 0.5, "audit": {"flags": []}, "escalation": None}]):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "eval.json").write_text(json.dumps(rec))
    out = run("evaluation_summary.py", str(tmp_path))
    assert "| ptq INT4 | 1 of 2 | 50.0 | 30.0 | 20.0 (0/eval.json) | 1 | 30 |" in out, out
    assert "Escalation seconds: 30 of 80 evaluation seconds (38 %)" in out


def test_reproduction_summary_puts_the_paper_beside_the_run_and_lists_the_claims(tmp_path):
    rows = [{"train": "rb", "method": "dense", "finetune": "none", "seed": s, "clean_acc": 0.8, "robust_acc_pgd": p,
             "robust_acc": w, "git_commit": "abc"} for s, p, w in ((0, 0.62, 0.60), (1, 0.64, 0.58))]
    arms = [{"train": "st", "method": "prune", "finetune": ft, "seed": s, "clean_acc": c, "robust_acc_pgd": w,
             "robust_acc": w, "git_commit": "abc"} for ft, s, c, w in (("ad", 0, 0.7, 0.5), ("ad", 1, 0.72, 0.48),
                                                                       ("scratch", 0, 0.098, 0.096))]
    pd.DataFrame(rows + arms).to_csv(tmp_path / "all_metrics.csv", index=False)
    (tmp_path / "tables").mkdir()
    pd.DataFrame([{"claim": "C1", "statement": "robust", "a": "f_rb", "b": "f_st", "metric": "robust",
                   "diff": 50.0, "ci_low": 48.0, "ci_high": 52.0, "verdict": "confirmed"}]).to_csv(
        tmp_path / "tables" / "claims.csv", index=False)
    twin = tmp_path / "twin"
    (twin / "tables").mkdir(parents=True)
    pd.DataFrame(rows).assign(robust_acc=0.7).to_csv(twin / "all_metrics.csv", index=False)
    pd.DataFrame([{"claim": "C1", "statement": "robust", "a": "f_rb", "b": "f_st", "metric": "robust",
                   "diff": 60.0, "ci_low": 58.0, "ci_high": 62.0, "verdict": "confirmed"}]).to_csv(
        twin / "tables" / "claims.csv", index=False)
    out = run("reproduction_summary.py", str(tmp_path), "--twin", str(twin),
              "--before", str(tmp_path / "all_metrics.csv"))
    assert ("| f_rb | 87.87 ± 0.33 | 82.51 ± 0.16 | 80.00 ± 0.00 | 63.00 ± 1.41 | 59.00 ± 1.41 "
            "| 80.00 ± 0.00 | 63.00 ± 1.41 | 70.00 ± 0.00 | 59.00 ± 1.41 |") in out
    assert "| f_st | 90.49 ± 0.22 | 4.26 ± 2.36 | n/a | n/a | n/a | n/a | n/a | n/a | n/a |" in out
    assert ("| C1 | robust (f_rb vs f_st, robust) | 50.00 | [48.00, 52.00] | confirmed "
            "| 60.00 | [58.00, 62.00] | confirmed |") in out and "run: seeds [0, 1]" in out
    assert "| T_ad(f_st^p) | 70.0 / 50.0 | 72.0 / 48.0 |" in out  # T_ad and the controls per seed
    assert "| S_ad^ft(arch f^p) | 9.8 / 9.6 | n/a |" in out
    alone = run("reproduction_summary.py", str(tmp_path))
    assert "| C1 | robust (f_rb vs f_st, robust) | 50.00 | [48.00, 52.00] | confirmed |\n" in alone + "\n"


TINY_DIGITS = ("--set", "data.train_subset=256", "--set", "data.test_subset=64", "--set", "train.epochs=1",
               "--set", "train.lr_drop_epoch=null", "--set", "train.eps_warmup_epochs=0", "--set", "finetune.epochs=1",
               "--set", "finetune.eps_warmup_epochs=0",
               "--set", "attack.eval={eps: 0.1, step_size: 0.05, steps: 2}")


def test_collapse_rate_counts_collapsed_seeds_with_the_shared_criterion(tmp_path):
    record = tmp_path / "rows.json"
    out = run("collapse_rate.py", "--seeds", "2", "--jobs", "2", *TINY_DIGITS, "--json", str(record))
    assert "digits-default: arm rb, seeds 0..1 (2)" in out and '"lr_warmup_epochs": ' in out, out
    rows = json.loads(record.read_text())["rows"]
    assert [r["seed"] for r in rows] == [0, 1] and all(len(r["history"]) == 1 for r in rows)
    assert all(0 <= r["robust_acc_pgd"] <= r["clean_acc"] <= 1 for r in rows)
    assert f"{sum(r['collapsed'] for r in rows)} of 2 collapsed" in out
    # a learning rate that blows the network up: every seed ends diverged or at chance, and is counted
    out = run("collapse_rate.py", "--seeds", "1,3", "--threads", "1", *TINY_DIGITS, "--set", "train.lr=1000")
    assert "| 1 |" in out and "| 3 |" in out and "2 of 2 collapsed" in out, out


def test_collapse_rate_runs_the_from_scratch_control_of_a_compressed_node():
    out = run("collapse_rate.py", "--arm", "scratch", "--compression", "ptq-int8", "--seeds", "1", *TINY_DIGITS)
    assert "arm scratch under ptq-int8, seeds 0..0 (1)" in out and "of 1 collapsed" in out, out
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "collapse_rate.py"), "--arm", "scratch"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "needs --compression" in result.stderr
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "collapse_rate.py"), "--set", "train.epochs=1"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "train.lr_drop_epoch" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("compression", ["prune-0.5", "ptq-int8"])
def test_a_from_scratch_control_owes_nothing_to_its_parents_weights(tmp_path, compression):
    """What collapse_rate.py relies on to skip training f_st: the scratch control of a compressed node ends
    with the same weights whether its parent was trained or not (the same architecture either way)."""
    import torch

    from advfine.pipeline.checkpoints import load_model, save_model
    from advfine.core.data import load_prepared
    from advfine.core.models import build_model
    from advfine.stages import compress, finetune, prepare_data, train_base
    from advfine.pipeline.records import Cost, write_stage_record
    from advfine.stages.common import dataset_arch, metrics_record
    from conftest import stage_settings, tiny_config

    small = {"data.train_subset": 128}
    data = str(tmp_path / "data.pt")
    prepare_data.run(stage_settings("prepare_data", **small), out_data=data)
    train_base.run(stage_settings("train_base", **small), data=data, train="st", seed=0,
                   out_model=str(tmp_path / "trained.pt"), out_metrics=str(tmp_path / "trained.json"))
    arch = dataset_arch(tiny_config(**small), load_prepared(data))
    save_model(tmp_path / "untrained.pt", build_model(arch), arch)
    write_stage_record(tmp_path / "untrained.json",
                       metrics_record(tiny_config(**small), 0, "cpu", "train_base", Cost.zero(), None))

    def scratch_control_of(parent: str) -> dict:
        node = {"data": data, "compression": compression, "seed": 0}
        compress.run(stage_settings("compress", **small), **node, model=str(tmp_path / f"{parent}.pt"),
                     metrics=str(tmp_path / f"{parent}.json"), out_model=str(tmp_path / f"{parent}-compressed.pt"),
                     out_metrics=str(tmp_path / f"{parent}-compressed.json"))
        finetune.run(stage_settings("finetune", **small), **node, mode="scratch",
                     model=str(tmp_path / f"{parent}-compressed.pt"),
                     metrics=str(tmp_path / f"{parent}-compressed.json"),
                     out_model=str(tmp_path / f"{parent}-scratch.pt"),
                     out_metrics=str(tmp_path / f"{parent}-scratch.json"))
        return load_model(tmp_path / f"{parent}-scratch.pt")[0].state_dict()

    from_trained, from_untrained = scratch_control_of("trained"), scratch_control_of("untrained")
    parents = [load_model(tmp_path / f"{p}-compressed.pt")[0].state_dict() for p in ("trained", "untrained")]
    assert not torch.equal(parents[0]["fc2.weight"], parents[1]["fc2.weight"])  # the parents differ...
    assert from_trained.keys() == from_untrained.keys()  # ...their controls do not
    assert all(torch.equal(from_trained[k], from_untrained[k]) for k in from_trained)


def test_the_run_time_split_compares_two_runs_stage_by_stage(tmp_path):
    def job_log(folder, name, rule, start, end, seconds):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / name).write_text(
            f"2026-12-06 07:{start},000 INFO advfine: rule {rule}, wildcards {{}}\n"
            f"2026-12-06 07:{end},000 INFO advfine: rule {rule}: peak_rss_mb=1.0 in_process_s={seconds}\n")

    job_log("old", "a.log", "evaluate", "00:00", "04:00", "230.00")
    job_log("old", "b.log", "evaluate", "00:00", "04:10", "240.00")
    job_log("old", "c.log", "train_base", "04:10", "05:00", "50.00")
    job_log("new", "a.log", "evaluate", "00:00", "01:00", "55.00")
    job_log("new", "c.log", "train_base", "01:00", "01:50", "45.00")
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_time_split.py"), "--logs",
                             str(tmp_path / "old"), str(tmp_path / "new"), "--cores", "2"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = {line.split(" | ")[0].strip("| *"): line.strip("| ").split(" | ")[1:] for line in result.stdout.splitlines()
            if line.startswith("| ")}
    assert rows["evaluate"] == ["2", "470", "1", "55", "8.55x"]
    assert rows["train_base"] == ["1", "50", "1", "45", "1.11x"]
    assert rows["all jobs"] == ["3", "520", "2", "100", "5.20x"]
    assert rows["elapsed (first job start to last job end), s"][1:4:2] == ["300", "110"]
    # old: 300 s elapsed over 520 / 2 in-process; new: 110 over 100 / 2
    assert rows["overhead ratio: elapsed / (in-process / 2 cores)"][1:4:2] == ["1.15", "2.20"]
