"""The tiny workflow through a real single-node Slurm cluster (slurmctld + slurmd + munge, one fake
GPU) with profiles/slurm: every job goes through sbatch, GPU rules get --gpus=1, and the results
equal those of a local run. Skips where Slurm cannot be started; CI sets ADVFINE_REQUIRE_SLURM=1
so there a skip is a failure."""
import json
import re
import subprocess
import sys
from collections import Counter

import pytest

import slurm_cluster
from advfine.pipeline.vocab import CPU_STAGES, DEPLOYMENT
from conftest import REPO, tiny_config
from test_kill_resume import without_timings
from test_workflow import snakemake, write_config

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

# 13 jobs of every kind but QAT: small enough for a few minutes of Slurm polling
SWEEP = {"sweep.base_models": ["rb"], "sweep.prune_sparsities": [0.5], "sweep.ptq_bits": [8],
         "sweep.finetune": ["none", "ad"], "sweep.dense_finetune": []}
JOBS = {"prepare_data": 1, "train_base": 1, "compress": 2, "finetune": 2, "evaluate": 5, "deployment": 1,
        "aggregate": 1}


def slurm_config():
    return tiny_config(**SWEEP, resources={"compute": {"gpu": 1, "mem_mb": 1000, "runtime": 30},
                                           "light": {"gpu": 0, "mem_mb": 500, "runtime": 10}})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    slurm_cluster.skip_or_fail_without_slurm()
    # 4 CPUs on 2 cores: the jobs mostly wait for Slurm's polling, so 4 at once is faster
    with slurm_cluster.SlurmCluster(tmp_path_factory.mktemp("cluster"), cpus=4, gpus=1) as running:
        yield running


def job_records(workdir):
    """{path: metrics} of every JSON a job wrote under results/."""
    return {str(p.relative_to(workdir)): json.loads(p.read_text())
            for p in sorted((workdir / "results").rglob("*.json"))}


def comparable(record):
    """A metrics JSON without timings and without where it ran (Slurm job id, GPUs given)."""
    record = without_timings(record)
    for entry in [record.get("provenance", {})]:
        entry.pop("slurm_job_id", None)
        entry.pop("cuda_visible_devices", None)
    return record


def test_the_workflow_runs_through_slurm_and_matches_a_local_run(cluster, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "slurm"
    for workdir in (local, remote):
        workdir.mkdir()
        write_config(workdir, slurm_config())
    local_run = snakemake(local, "all_tables")
    assert local_run.returncode == 0, local_run.stderr[-3000:]

    cmd = ["timeout", "-k", "15", "1200", sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
           "--directory", str(remote), "--profile", str(REPO / "profiles" / "slurm"), "--jobs", "4", "all_tables"]
    slurm_run = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=1300)
    assert slurm_run.returncode == 0, (slurm_run.stderr[-4000:], cluster.log_tails())

    # every job (the light ones too) was submitted with sbatch; only the target rule ran locally
    submitted = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S+/rule_(\w+)/", slurm_run.stderr)
    assert Counter(rule for _, rule in submitted) == JOBS, slurm_run.stderr[-3000:]
    # each metrics file was written inside its own Slurm job
    records = job_records(remote)
    ids = [r["provenance"]["slurm_job_id"] for r in records.values()]
    assert len(set(ids)) == len(ids) and set(ids) <= {job_id for job_id, _ in submitted}, ids
    # GPU rules asked for a GPU (the fake one: CUDA_VISIBLE_DEVICES=0), CPU stages for none; the device is
    # still the CPU
    rule_of_job = dict(submitted)
    for path, record in records.items():
        rule = rule_of_job[record["provenance"]["slurm_job_id"]]
        gpus = None if rule in CPU_STAGES else "0"
        assert record["provenance"]["cuda_visible_devices"] == gpus, (path, rule)
        assert record["provenance"]["device"] == "cpu", path

    # same results as the local run, and the same tables
    assert records.keys() == job_records(local).keys()
    for path, record in job_records(local).items():
        assert record["provenance"]["slurm_job_id"] is None  # the local run ran no Slurm job
        if path.endswith(f"{DEPLOYMENT}.json"):  # timings, taken on other machines: the same nodes timed
            assert [n["eval"] for n in records[path]["nodes"]] == [n["eval"] for n in record["nodes"]]
            continue
        assert comparable(records[path]) == comparable(record), path
    tables = sorted(p.relative_to(local) for p in (local / "results").rglob("tables/*.csv")
                    if p.stem not in ("computational_gains", "compute"))  # they hold wall times, latencies, memory
    assert tables
    for table in tables:
        assert (remote / table).read_text() == (local / table).read_text(), table
