"""The whole Snakemake DAG on a tiny config, in a scratch working directory."""
import json
import re
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from record_factory import stage_record

from advfine.pipeline.records import read_eval_record, write_stage_record
from conftest import REPO, planned_outputs, snakemake, tiny_config, workflow_config, write_config


@pytest.mark.slow
def test_the_whole_dag_produces_tables_and_figures(finished_run):
    out = finished_run / "results" / "tiny"
    evals = sorted(out.rglob("eval.json"))
    # 2 bases dense, T_ad(f_st), 2 bases x 2 compressions x 3 ft, QAT of f_rb x 3 ft; controls: FGSM-RS under
    # the 5 compressed nodes, from scratch under the 2 of base st
    assert len(evals) == 2 + 1 + 2 * 2 * 3 + 3 + 5 + 2
    for path in evals:
        read_eval_record(path)  # valid for the reader the report uses
        record = json.loads(path.read_text())
        assert 0 <= record["robust_acc"] <= record["clean_acc"] <= 1
        first_stage = "finetune" if "/ft-scratch/" in str(path) else "train_base"
        assert record["provenance"]["git_commit"] and record["stages"][0]["stage"] == first_stage
        assert record["attack"]["eps_space"] == "pixel"
        assert record["robust_acc"] <= record["robust_acc_pgd"] and isinstance(record["audit"]["flags"], list)
        assert (path.parent / "samples.csv").read_text().startswith("index,label,clean_correct,robust,broken_by")
    df = pd.read_csv(out / "all_metrics.csv")
    assert len(df) == len(evals)
    for table in ("table2_baselines", "table3_compressed", "table5_adversarial_finetuning"):
        text = (out / "tables" / f"{table}.md").read_text()
        assert "| n/a" not in text, f"{table} has an empty cell"
        assert "\\begin{tabular}" in (out / "tables" / f"{table}.tex").read_text()
    assert (out / "tables" / "computational_gains.csv").exists()
    frontier = pd.read_csv(out / "tables" / "efficiency.csv")  # every recipe, f_rb the reference of the ratios
    assert len(frontier) == df.groupby(["train", "method", "level", "finetune"], dropna=False).ngroups
    f_rb = frontier[(frontier["model"] == "f_rb") & (frontier["scored"] > 0)]
    assert (f_rb["obtain_ratio"] == 1.0).all() and frontier["pareto_obtain"].any()
    controls = pd.read_csv(out / "tables" / "controls.csv")
    assert set(controls["finetune"]) == {"ad", "fgsm", "scratch"} and (controls["n"] == 1).all()
    claims = pd.read_csv(out / "tables" / "claims.csv").set_index("claim")
    decided = ("confirmed", "refuted", "inconclusive")
    for claim, row in claims[claims["n_seeds"] > 0].iterrows():  # a verdict exactly where no seed collapsed
        unhealthy = row[["a_diverged", "b_diverged", "a_collapsed", "b_collapsed"]].sum() > 0
        assert (row["verdict"] in ("diverged", "collapsed")) if unhealthy else (row["verdict"] in decided), claim
    assert claims.loc["X1", "n_seeds"] == 1 and claims.loc["X1", "verdict"] != "not run"
    assert claims.loc["C1", "n_samples"] == 128 and "confirmed" in (out / "tables" / "claims.md").read_text()
    for fig in ("figure1_adversarial_finetuning", "figure2_tsne", "figure3_no_finetuning", "figure4_qat",
                "figure5_robustness_curves", "figure6_frontier"):
        assert (out / "figures" / f"{fig}.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / "figures" / f"{fig}.pdf").read_bytes()[:4] == b"%PDF"
    logs = list((finished_run / "logs").rglob("*.log"))
    assert len(logs) >= len(evals) and any("epoch" in p.read_text() for p in logs)


@pytest.mark.slow
def test_deployment_times_every_model_alone_and_the_tables_read_it(finished_run):
    """One deployment job times every evaluated model (the PTQ INT8 nodes' real integer model beside its float
    twin); it holds every core (threads = --cores), so Snakemake's scheduler starts it only when no other job
    runs and none beside it: read back from the run's Snakemake log. all_metrics.csv takes its latencies."""
    out = finished_run / "results" / "tiny"
    timed = json.loads((out / "deployment.json").read_text())
    assert timed["settings"]["rounds"] == 20 and timed["settings"]["threads"] == 1
    assert timed["settings"]["job_threads"] == 2
    nodes = timed["nodes"]
    assert sorted(n["eval"] for n in nodes) == sorted(str(p.relative_to(finished_run)) for p in out.rglob("eval.json"))
    for node in nodes:
        expected = ["float_twin", "int8", "model"] if node["compression"] == "ptq-int8" and not node["diverged"] \
            else (["float_twin", "model"] if node["compression"] == "ptq-int8" else ["model"])
        assert sorted(node["models"]) == expected, node
        for about in node["models"].values():
            assert about["repeats"] == 20 and about["latency_ms"] > 0 and about["batch_size"] == 256
    df = pd.read_csv(out / "all_metrics.csv")
    assert df["latency_ms"].notna().all() and (df["latency_rounds"] == 20).all()
    quantized = df[(df["compression"] == "ptq-int8") & ~df["diverged"]]
    assert quantized["int8_latency_ms"].notna().all() and quantized["float_twin_latency_ms"].notna().all()
    # what differs by 3x and more is never reversed: 50 % pruning against its dense base, a real integer model
    # against its float twin. The 10 % agreement of one architecture's models is test_deployment.py's (this
    # machine runs other work beside the workflow, which nothing in Snakemake keeps out)
    for train, runs in df.groupby("train"):
        dense = runs.loc[runs["compression"] == "dense", "latency_ms"]
        assert runs.loc[runs["compression"] == "prune-0.5", "latency_ms"].max() < dense.min(), train
    assert (quantized["int8_latency_ms"] < quantized["float_twin_latency_ms"]).all()
    (log,) = [p for p in (finished_run / ".snakemake" / "log").glob("*.snakemake.log")
              if "(Rule: deployment)" in p.read_text()]
    events = re.findall(r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    jobid: (\d+)$"
                        r"|^Finished jobid: (\d+) \(Rule: (\w+)\)$", log.read_text(), flags=re.M)
    running, alone = set(), None
    for started, start_id, finished_id, finished in events:
        if started:
            assert alone in (None, "done"), f"job {start_id} ({started}) started beside the deployment job"
            if started == "deployment":
                assert not running, f"the deployment job started beside jobs {running}"
                alone = start_id
            running.add(start_id)
        else:
            running.discard(finished_id)
            if finished_id == alone:
                alone = "done"
    assert alone == "done"


@pytest.mark.slow
def test_a_rerun_schedules_nothing(finished_run):
    result = snakemake(finished_run, "all", "-n")
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.slow
def test_deterministic_reaches_every_job_that_computes(finished_run):
    """Turning ``deterministic`` off changes the params of every model rule (so they rerun, as the
    results may change on a GPU), and every metrics file records the setting it ran with."""
    for path in (finished_run / "results").rglob("*.json"):
        assert json.loads(path.read_text())["provenance"]["deterministic"] is True, path
    write_config(finished_run, workflow_config(deterministic=False))
    try:
        result = snakemake(finished_run, "all", "-n")
    finally:
        write_config(finished_run, workflow_config())
    assert result.returncode == 0, result.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, flags=re.M))
    for rule in ("train_base", "compress", "qat", "finetune", "evaluate", "figure2"):
        assert int(counts.get(rule, 0)) > 0, (rule, result.stdout[-3000:])
    assert int(counts.get("prepare_data", 0)) == 0  # reads no such setting


@pytest.mark.slow
def test_the_snakemake_report_holds_the_tables_and_figures_with_captions(finished_run):
    """`snakemake --report report.html`, the ecosystem's way to share a run: one self-contained HTML
    file with every table and figure of the run and the caption of each."""
    report = finished_run / "report.html"
    result = snakemake(finished_run, "--report", str(report), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    html = report.read_text(errors="replace")
    assert len(html) > 100_000  # the figures are embedded
    for name in ("table2_baselines", "table3_compressed", "table5_adversarial_finetuning", "computational_gains",
                 "compute", "evaluation_audit", "all_metrics", "figure1_adversarial_finetuning", "figure2_tsne",
                 "figure3_no_finetuning", "figure4_qat", "figure5_robustness_curves", "figure6_frontier", "efficiency",
                 "efficiency_stages"):
        assert name in html, name
    for caption in ("The paper's Table 2", "The paper's Figure 2", "computational gains", "One row per evaluated"):
        assert caption in html, caption
    assert "tiny" in html  # the workflow description names the experiment (rendered from the config)


@pytest.mark.slow
def test_extending_the_sweep_plans_only_the_new_nodes(finished_run):
    cfg = workflow_config()
    cfg["sweep"]["seeds"] = [0, 1]
    cfg["sweep"]["prune_sparsities"] = [0.5, 0.8]
    cfg["sweep"]["ptq_bits"] = [8, 4]
    write_config(finished_run, cfg)
    try:
        result = snakemake(finished_run, "all", "-n")
    finally:
        write_config(finished_run, workflow_config())
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = planned_outputs(result)
    nodes = [o for o in outputs if "/seed" in o]
    assert nodes, result.stdout[-2000:]
    new = re.compile(r"seed1/|prune-0\.8|ptq-int4")
    assert all(new.search(o) for o in nodes), [o for o in nodes if not new.search(o)]
    assert not any("seed0/base-st/model.pt" in o for o in outputs)


@pytest.mark.parametrize("change,key", [({"data.name": "imagenet"}, "imagenet"),
                                        ({"sweep.ptq_bits": [3]}, "ptq_bits"),
                                        ({"report.ptq_bits": 4}, "report.ptq_bits")])
def test_a_bad_config_fails_before_any_job_naming_the_key(tmp_path, change, key):
    write_config(tmp_path, tiny_config(validate=False, **change))
    result = snakemake(tmp_path, "all", "-n", timeout=120)
    assert result.returncode != 0
    assert key in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_resolved_config_writes_what_the_stages_get(tmp_path):
    """`snakemake resolved_config` writes results/<experiment>/config.resolved.yaml: for a paper config,
    AutoAttack's standard suite from the schema (nothing from config.yaml's light suite)."""
    from advfine.pipeline.config import resolve_config

    paper = REPO / "configs" / "paper-fmnist.yaml"
    result = snakemake(tmp_path, "--configfile", str(paper), "--config", "threads=3", "--", "resolved_config",
                       timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    written = yaml.safe_load((tmp_path / "results" / "paper-fmnist" / "config.resolved.yaml").read_text())
    assert written == resolve_config([paper], {"threads": 3}, REPO)
    suite = written["evaluate"]
    assert (suite["apgd"]["steps"], suite["apgd"]["target_classes"], suite["square"]["queries"]) == (100, 9, 5000)
    assert "fab_t" in suite["attacks"] and written["threads"] == 3
    assert not list((tmp_path / "results").rglob("*.json"))  # nothing else ran


def test_a_device_this_machine_lacks_is_refused_before_any_job(tmp_path):
    write_config(tmp_path, tiny_config(device="cuda:99"))
    result = snakemake(tmp_path, "all_tables", timeout=120)
    assert result.returncode != 0
    assert "config key device: 'cuda:99'" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_lint_passes():
    result = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_snakefmt_leaves_the_workflow_unchanged():
    """`make lint`'s second check, here so that a local test run sees it before CI does."""
    result = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow/"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize("name,jobs", [
    ("paper-fmnist", {"train_base": 6, "compress": 84, "qat": 15, "finetune": 201, "evaluate": 306, "figure2": 1}),
    ("paper-cifar10", {"train_base": 6, "compress": 84, "qat": 15, "finetune": 201, "evaluate": 306}),
])
def test_the_paper_configs_plan_the_whole_study(tmp_path, name, jobs):
    """3 seeds x 2 base models x (9 sparsities + 5 PTQ bit widths) x fine-tuning none/st/ad, QAT of f_rb
    at 5 bit widths, T_ad(f_st): planned without error (they need a GPU to run)."""
    write_config(tmp_path, yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text()))
    result = snakemake(tmp_path, "all", "-n", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, flags=re.M))
    assert {rule: int(counts.get(rule, 0)) for rule in jobs} == jobs
    assert ("figure2" in counts) == ("figure2" in jobs)


def test_job_resources_come_from_the_config(tmp_path):
    """compute rules ask for the GPU, memory, time and partition of resources.compute (+ per-rule
    overrides); the light rules take no GPU, nor do compress and deployment (they run on the CPU), and
    deployment asks for a node of its own. The SLURM profile turns these into sbatch options."""
    resources = {"compute": {"gpu": 1, "mem_mb": 3000, "runtime": 30, "slurm_partition": "gpu"},
                 "light": {"gpu": 0, "mem_mb": 1000, "runtime": 5},
                 "rules": {"train_base": {"runtime": 600, "slurm_partition": "gpu-long"}}}
    write_config(tmp_path, tiny_config(resources=resources))
    result = snakemake(tmp_path, "all", "-n", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    planned = {}
    for rule, res in re.findall(r"^\s*rule (\w+):\n(?:\s+\w+: .*\n)*?\s+resources: (.*)$", result.stdout, flags=re.M):
        planned.setdefault(rule, set()).add(res)
    assert set(planned) >= {"prepare_data", "train_base", "compress", "finetune", "evaluate", "aggregate", "plot"}
    for rule, variants in planned.items():
        if rule.startswith("all") or rule == "resolved_config":
            continue  # target rules run nothing; resolved_config writes one file in Snakemake's own process
        (res,) = variants  # every job of a rule asks the same
        fields = dict(item.split("=", 1) for item in res.split(", "))
        if rule == "train_base":
            expected = {"gpu": "1", "mem_mb": "3000", "runtime": "600", "slurm_partition": "gpu-long"}
        elif rule in ("prepare_data", "aggregate", "plot"):
            expected = {"gpu": "0", "mem_mb": "1000", "runtime": "5"}
        elif rule == "compress":
            expected = {"gpu": "0", "mem_mb": "3000", "runtime": "30", "slurm_partition": "gpu"}
        elif rule == "deployment":  # times CPU inference on a node of its own
            expected = {"gpu": "0", "mem_mb": "3000", "runtime": "30", "slurm_partition": "gpu",
                        "slurm_extra": "--exclusive"}
        else:
            expected = {"gpu": "1", "mem_mb": "3000", "runtime": "30", "slurm_partition": "gpu"}
        assert {k: fields.get(k) for k in expected} == expected, (rule, res)


def test_controls_are_nodes_beside_t_ad_and_scratch_ones_are_made_once_per_seed(tmp_path):
    """sweep.controls adds ft-<control> under every compressed node; the from-scratch controls only under
    the first base model (they train its compressed architecture from random weights)."""
    write_config(tmp_path, workflow_config(**{"sweep.controls": ["fgsm", "nfgsm", "trades", "scratch",
                                                                 "scratch-full"]}))
    result = snakemake(tmp_path, "all", "-n", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    evals = [p for o in planned_outputs(result) for p in o.split(", ") if p.endswith("eval.json")]
    for control in ("fgsm", "nfgsm", "trades"):
        assert sum(f"/ft-{control}/" in o for o in evals) == 5  # prune-0.5, ptq-int8 of st and rb, qat-int8 of rb
    for control in ("scratch", "scratch-full"):
        made = [o for o in evals if f"/ft-{control}/" in o]
        assert len(made) == 2 and all("/base-st/" in o for o in made), made


def test_control_base_models_limit_the_controls_to_those_base_models(tmp_path):
    """sweep.control_base_models: [rb] puts every control arm, the from-scratch ones too, under f_rb only."""
    write_config(tmp_path, workflow_config(**{"sweep.controls": ["fgsm", "scratch"],
                                              "sweep.control_base_models": ["rb"]}))
    result = snakemake(tmp_path, "all", "-n", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    evals = [p for o in planned_outputs(result) for p in o.split(", ") if p.endswith("eval.json")]
    for control in ("fgsm", "scratch"):
        made = [o for o in evals if f"/ft-{control}/" in o]
        assert made and all("/base-rb/" in o for o in made), made


def test_the_end_of_a_run_names_a_collapsed_model(tmp_path):
    """The Snakefile's onsuccess handler prints the health banner (run_health.announce_health)."""
    write_config(tmp_path, workflow_config())
    metrics = tmp_path / "results/tiny/digits-cnn8/seed0/base-rb/metrics.json"
    metrics.parent.mkdir(parents=True)
    write_stage_record(metrics, stage_record("train_base", ["train_base"], collapsed=True,
                                             collapsed_reason="epoch 2: training loss 2.3026 >= ln 10 = 2.3026"))
    result = snakemake(tmp_path, "results/tiny/data/digits.pt", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TRAINING HEALTH: 1 model(s)" in result.stderr
    assert "COLLAPSED results/tiny/digits-cnn8/seed0/base-rb (stage train_base)" in result.stderr
