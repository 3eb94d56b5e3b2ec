"""Slurm submissions of an experiment under profiles/slurm: how many sbatch jobs, and what its group jobs ask for.

    .venv/bin/python benchmarks/slurm_groups.py --configfile configs/paper-fmnist.yaml [--target all]

A dry run with the profile's settings in a scratch directory: it needs no data and no Slurm. It counts
the jobs Snakemake would submit without groups (one sbatch per job) and with the profile's groups (one
per group job, one per job outside a group), and computes each group job's request as Snakemake does
for a cluster (snakemake.resources.GroupResources with the profile's `resources` as the limits inside a
group job): --time is the sum of the members that run one after another, --mem, --gpus and
--cpus-per-task what runs at once. Prints the counts and the largest requests.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from snakemake import cli
from snakemake.dag import DAG
from snakemake.resources import GroupResources

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm"
# On a cluster Snakemake leaves --cores unset, so nothing caps a member's threads; a dry run would set 1.
CLUSTER_CORES = "1024"


@dataclass
class GroupRequest:
    jobs: Counter
    runtime: int
    mem_mb: int
    gpu: int
    cpus: int


@dataclass
class Plan:
    jobs: Counter         # every job that a run without groups submits, by rule
    single: Counter       # jobs outside a group: one submission each, by rule
    groups: list[GroupRequest]

    @property
    def submissions(self) -> int:
        return sum(self.single.values()) + len(self.groups)


def plan(configfile: Path, target: str = "all", profile: Path = PROFILE) -> Plan:
    """The submissions of ``target`` of ``configfile`` under ``profile``, from a dry run in a scratch directory."""
    planned = []
    update_groups = DAG.update_groups

    def keep_dag(dag):  # the last grouping of the DAG is the one that runs
        update_groups(dag)
        planned[:] = [dag]

    scratch = Path(tempfile.mkdtemp(prefix="advfine-groups-"))
    args = [target, "-s", str(REPO / "Snakefile"), "--directory", str(scratch), "--profile", str(profile),
            "--configfile", str(Path(configfile).resolve()), "--cores", CLUSTER_CORES, "-n", "--quiet", "all"]
    DAG.update_groups = keep_dag
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            cli.main(args)
    except SystemExit as done:
        if done.code:
            sys.exit(f"snakemake {' '.join(args)} failed:\n{log.getvalue()[-3000:]}")
    finally:
        DAG.update_groups = update_groups
        shutil.rmtree(scratch, ignore_errors=True)
    dag = planned[0]
    workflow = dag.workflow
    submitted = [job for job in dag.needrun_jobs(exclude_finished=False)
                 if job.rule.name not in workflow._localrules]
    groups = {dag.get_job_group(job) for job in submitted} - {None}
    requests = []
    for group in groups:
        request = GroupResources.basic_layered(toposorted_jobs=group.toposorted, constraints=workflow.global_resources,
                                               run_local=False, additive_resources=["runtime"], sortby=["runtime"])
        requests.append(GroupRequest(Counter(job.rule.name for job in group.jobs), request["runtime"],
                                     request["mem_mb"], request.get("gpu", 0), request["_cores"]))
    return Plan(jobs=Counter(job.rule.name for job in submitted),
                single=Counter(job.rule.name for job in submitted if dag.get_job_group(job) is None),
                groups=sorted(requests, key=lambda g: -g.runtime))


def hours(minutes: int) -> str:
    return f"{minutes // 60}:{minutes % 60:02d}:00"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", type=Path, default=REPO / "config.yaml")
    parser.add_argument("--target", default="all")
    args = parser.parse_args()
    result = plan(args.configfile, args.target)
    single = ", ".join(f"{rule} {n}" for rule, n in sorted(result.single.items()))
    print(f"{args.configfile}: {sum(result.jobs.values())} jobs for the cluster")
    print(f"sbatch submissions without groups: {sum(result.jobs.values())}")
    print(f"sbatch submissions with {PROFILE.relative_to(REPO)}: {result.submissions} = {len(result.groups)} group "
          f"jobs ({sum(sum(g.jobs.values()) for g in result.groups)} jobs) + {sum(result.single.values())} single "
          f"jobs ({single})")
    if result.groups:
        longest, widest = result.groups[0], max(result.groups, key=lambda g: (g.mem_mb, g.gpu, g.cpus))
        for name, group in (("longest", longest), ("largest", widest)):
            members = ", ".join(f"{rule} {n}" for rule, n in sorted(group.jobs.items()))
            print(f"{name} group job: {sum(group.jobs.values())} jobs ({members}): --time={hours(group.runtime)} "
                  f"--mem={group.mem_mb}M --gpus={group.gpu} --cpus-per-task={group.cpus}")


if __name__ == "__main__":
    main()
