"""A real single-node Slurm cluster comes up, runs a GPU job and goes away."""
import subprocess

import pytest

import slurm_cluster


@pytest.mark.slurm
def test_sbatch_gpu_job_runs(tmp_path):
    slurm_cluster.skip_or_fail_without_slurm()
    with slurm_cluster.SlurmCluster(tmp_path / "cluster") as cluster:
        r = subprocess.run(
            ["sbatch", "--wait", "--gpus=1", "--wrap", "echo $CUDA_VISIBLE_DEVICES $SLURM_JOB_ID > out.txt"],
            cwd=tmp_path, env=cluster.env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{cluster.log_tails()}"
        job_id = r.stdout.split()[-1]  # "Submitted batch job <id>"
        gpu, ran_as = (tmp_path / "out.txt").read_text().split()
        assert gpu == "0"  # the fake GPU was allocated
        assert ran_as == job_id and job_id.isdigit()
