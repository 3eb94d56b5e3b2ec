"""The tiny workflow through a real single-node Slurm cluster (slurmctld + slurmd + munge, one fake
GPU) with profiles/slurm: every job goes through sbatch, the compress, finetune and evaluate jobs in one
group job whose request is the one benchmarks/slurm_groups.py plans, and the results equal those of a
local run. Skips where Slurm cannot be started; CI sets ADVFINE_REQUIRE_SLURM=1
so there a skip is a failure."""
import json
import re
import subprocess
import sys
from collections import Counter

import pytest

import slurm_cluster
from advfine.pipeline.vocab import DEPLOYMENT
from conftest import REPO, tiny_config
from test_kill_resume import without_timings
from test_workflow import snakemake, write_config

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

# 13 jobs of every kind but QAT: small enough for a few minutes of Slurm polling
SWEEP = {"sweep.base_models": ["rb"], "sweep.prune_sparsities": [0.5], "sweep.ptq_bits": [8],
         "sweep.finetune": ["none", "ad"], "sweep.dense_finetune": []}
# 13 sbatch calls without groups (prepare_data 1, train_base 1, compress 2, finetune 2, evaluate 5,
# deployment 1, aggregate 1); with the profile's group `short` the 9 compress, finetune and evaluate jobs are one
SUBMISSIONS = {"rule_prepare_data": 1, "rule_train_base": 1, "group_short": 1, "rule_deployment": 1,
               "rule_aggregate": 1}


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


def planned_group_request(configfile) -> dict:
    """The longest group job's request that benchmarks/slurm_groups.py plans for ``configfile``."""
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "slurm_groups.py"), "--configfile",
                             str(configfile), "--target", "all_tables"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = re.search(r"^longest group job: .*$", result.stdout, flags=re.M).group(0)
    hours, minutes, _ = re.search(r"--time=([\d:]+)", line).group(1).split(":")
    values = dict(re.findall(r"--(mem|gpus|cpus-per-task)=(\d+)", line))
    return {"time": int(hours) * 60 + int(minutes), "mem": int(values["mem"]), "gpus": int(values["gpus"]),
            "cpus": int(values["cpus-per-task"])}


def group_request(job_id: str, env: dict) -> dict:
    """What Slurm job ``job_id`` asked for (scontrol keeps a finished job for MinJobAge = 300 s)."""
    shown = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=env, capture_output=True, text=True,
                           timeout=60)
    assert shown.returncode == 0, shown.stderr
    fields = dict(re.findall(r"(\w+)=(\S+)", shown.stdout))
    hours, minutes, _ = fields["TimeLimit"].split(":")
    gpus = re.search(r"gres[/:]gpu[:=](\d+)", shown.stdout)  # TresPerJob=gres:gpu:1 (or gres/gpu=1)
    return {"time": int(hours) * 60 + int(minutes), "mem": int(fields["MinMemoryNode"].rstrip("M")),
            "gpus": int(gpus.group(1)) if gpus else 0, "cpus": int(fields["NumCPUs"])}


def test_the_workflow_runs_through_slurm_and_matches_a_local_run(cluster, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "slurm"
    for workdir in (local, remote):
        workdir.mkdir()
        write_config(workdir, slurm_config())
    local_run = snakemake(local, "all_tables")
    assert local_run.returncode == 0, local_run.stderr[-3000:]
    # the rules' group only matters on a cluster: a local run runs each job on its own
    assert "Group job" not in local_run.stderr and "rule evaluate:" in local_run.stderr, local_run.stderr[-3000:]

    cmd = ["timeout", "-k", "15", "1200", sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
           "--directory", str(remote), "--profile", str(REPO / "profiles" / "slurm"), "--jobs", "4", "all_tables"]
    slurm_run = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=1300)
    assert slurm_run.returncode == 0, (slurm_run.stderr[-4000:], cluster.log_tails())

    # every job (the light ones too) was submitted with sbatch, the short ones in one group job; only the
    # target rule ran locally
    # (a group job's log folder is group_<group>_<its rules>)
    submitted = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S+/(rule_\w+|group_short)\w*/", slurm_run.stderr)
    assert Counter(name for _, name in submitted) == SUBMISSIONS, slurm_run.stderr[-3000:]
    print(f"{len(submitted)} sbatch submissions (13 without groups):", dict(Counter(name for _, name in submitted)))
    job_of = {name: job_id for job_id, name in submitted}
    # train_base and deployment wrote their records in their own Slurm jobs, every compress, finetune and
    # evaluate job in the group's
    records = job_records(remote)
    ids = Counter(r["provenance"]["slurm_job_id"] for r in records.values())
    assert ids == {job_of["rule_train_base"]: 1, job_of["rule_deployment"]: 1,
                   job_of["group_short"]: len(records) - 2}, ids
    # the group job asked for what the dry run plans: one GPU, the members' runtimes one after another
    requested = group_request(job_of["group_short"], cluster.env)  # first: Slurm forgets it 300 s after its end
    planned = planned_group_request(remote / "config.yaml")
    assert requested == planned, cluster.log_tails()
    assert planned == {"time": 210, "mem": 3000, "gpus": 1, "cpus": 3}  # 30 min x (1 + 4 + 2) layers; 3 jobs at once
    # every job of a GPU rule got the fake GPU (CUDA_VISIBLE_DEVICES=0): compress (a CPU stage) too, inside
    # the group's allocation; deployment (CPU only, its own job) none; the device is still the CPU
    for path, record in records.items():
        gpus = None if record["provenance"]["slurm_job_id"] == job_of["rule_deployment"] else "0"
        assert record["provenance"]["cuda_visible_devices"] == gpus, path
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
                    if p.stem not in ("computational_gains", "compute", "efficiency", "efficiency_stages"))
    # (those hold wall and CPU times, latencies, memory: measured, never equal between two runs)
    assert tables
    for table in tables:
        assert (remote / table).read_text() == (local / table).read_text(), table
