"""profiles/slurm's group jobs, planned by a dry run (benchmarks/slurm_groups.py: no Slurm, no data): the
paper sweep goes to a cluster in tens of sbatch submissions, not hundreds, and no group job asks for more
than one GPU or for a day."""
import re
import subprocess
import sys

from conftest import REPO


def test_the_paper_sweep_is_submitted_in_tens_of_jobs():
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "slurm_groups.py"), "--configfile",
                             str(REPO / "configs" / "paper-fmnist.yaml")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    print(result.stdout)  # the counts, for the log (pytest -s)
    before = int(re.search(r"without groups: (\d+)", result.stdout).group(1))
    after = int(re.search(r"with profiles/slurm: (\d+)", result.stdout).group(1))
    assert before > 500 and 10 <= after < 100, result.stdout
    longest = re.search(r"^longest group job: .*--time=(\d+):(\d+):00 --mem=(\d+)M --gpus=(\d+)", result.stdout,
                        flags=re.M)
    hours, minutes, mem_mb, gpus = map(int, longest.groups())
    assert hours * 60 + minutes <= 12 * 60 and mem_mb <= 16000 and gpus == 1, result.stdout
