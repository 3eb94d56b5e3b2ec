"""A real workflow run killed with SIGKILL in the middle of adversarial training: nothing that looks
complete is left behind, the re-run redoes only the killed node (resuming from its last finished
epoch), and the final metrics equal those of an uninterrupted run."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from advfine.core.train import resume_path_for

from conftest import REPO, tiny_config
from test_workflow import snakemake, write_config

pytestmark = pytest.mark.slow

EPOCHS = 6
NODE = "results/tiny/digits-cnn8/seed0/base-{train}"
TARGETS = [f"{NODE.format(train=t)}/dense/ft-none/eval.json" for t in ("st", "rb")]
# what two runs of the same work legitimately differ in: times, when, machine load, and the cost ledger's
# readings (a resumed run did not meter its restored epochs: its energy_method says so)
VOLATILE = {"wall_time_s", "eval_wall_time_s", "created", "restored", "latency_ms", "peak_rss_mb", "cpu_time_s",
            "gpu_time_s", "energy_j", "energy_method"}


def kill_config():
    # adversarial training of f_rb over several epochs of about a second each
    return tiny_config(**{"train.epochs": EPOCHS, "train.lr_drop_epoch": 4, "train.eps_warmup_epochs": 1})


def without_timings(value):
    """A metrics JSON without what legitimately differs between runs: wall times, creation time, and
    the marks of epochs restored from a resume checkpoint."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def read(workdir, path):
    return json.loads((workdir / path).read_text())


def job_counts(stdout: str) -> dict[str, int]:
    """The 'Job stats' table of a snakemake run: {rule: count}."""
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", stdout, flags=re.M) if rule != "total"}


def complete_run(workdir):
    """The targets run to the end, uninterrupted, in ``workdir``."""
    write_config(workdir, kill_config())
    result = snakemake(workdir, *TARGETS)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return complete_run(tmp_path_factory.mktemp("uninterrupted"))


def test_a_job_killed_mid_epoch_resumes_and_ends_with_the_same_metrics(uninterrupted, tmp_path):
    write_config(tmp_path, kill_config())
    first = snakemake(tmp_path, TARGETS[0])  # f_st and its evaluation complete before the kill
    assert first.returncode == 0, first.stderr[-3000:]
    done_before = {p: p.stat().st_mtime_ns for p in (tmp_path / "results").rglob("*") if p.is_file()}

    rb = tmp_path / NODE.format(train="rb")
    resume = resume_path_for(rb / "model.pt")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--cores", "1", *TARGETS]
    run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not resume.exists():  # the first epoch of f_rb is done
            assert run.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no resume checkpoint appeared"
            time.sleep(0.05)
        time.sleep(0.3)  # into the next epoch
        os.killpg(run.pid, signal.SIGKILL)  # snakemake and its job, as a node failure would
    finally:
        run.wait()

    # nothing that looks complete: no model or metrics of f_rb (only hidden temporary files at most)
    assert not (rb / "model.pt").exists() and not (rb / "metrics.json").exists()
    assert resume.exists()

    unlock = snakemake(tmp_path, "--unlock", *TARGETS)  # SIGKILL left snakemake's lock behind
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    again = snakemake(tmp_path, "--rerun-incomplete", *TARGETS)
    assert again.returncode == 0, again.stderr[-3000:]
    assert job_counts(again.stdout + again.stderr) == {"train_base": 1, "evaluate": 1}, again.stderr[-2000:]
    for path, mtime in done_before.items():  # the finished nodes were not touched
        assert path.stat().st_mtime_ns == mtime, path

    log = (tmp_path / "logs/tiny/digits-cnn8/seed0/base-rb/train_base.log").read_text()
    resumed = re.findall(r"resuming after epoch (\d+) of (\d+)", log)
    assert len(resumed) == 1 and 1 <= int(resumed[0][0]) < EPOCHS, log[-2000:]
    assert not resume.exists()  # removed once the outputs were written

    metrics = read(tmp_path, f"{NODE.format(train='rb')}/metrics.json")
    assert [r.get("restored", False) for r in metrics["history"]].count(True) == int(resumed[0][0])
    for path in TARGETS + [f"{NODE.format(train='rb')}/metrics.json"]:
        assert without_timings(read(tmp_path, path)) == without_timings(read(uninterrupted, path)), path


@pytest.fixture(scope="module")
def second_run(tmp_path_factory):
    return complete_run(tmp_path_factory.mktemp("second"))


def test_two_runs_with_the_same_seed_and_config_give_identical_metrics(uninterrupted, second_run):
    """Determinism on CPU: a second, independent run (new processes, new directory) writes the same
    metrics, training histories and evaluations, timings aside."""
    written = sorted(p.relative_to(second_run) for p in (second_run / "results").rglob("*.json"))
    assert len(written) == 4  # two base models, two evaluations
    for path in written:
        assert without_timings(read(second_run, path)) == without_timings(read(uninterrupted, path)), path


def test_a_truncated_checkpoint_fails_its_job_naming_the_file_and_touches_nothing_else(second_run, tmp_path):
    import hashlib
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(second_run, workdir)  # keeps mtimes: snakemake sees a finished run
    model = workdir / NODE.format(train="st") / "model.pt"
    model.write_bytes(model.read_bytes()[:5000])
    (workdir / TARGETS[0]).unlink()  # its evaluation must read the damaged checkpoint again
    (workdir / TARGETS[0]).with_name("samples.csv").unlink()  # (snakemake removes a job's old outputs)
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (workdir / "results").rglob("*") if p.is_file()}

    result = snakemake(workdir, *TARGETS)
    assert result.returncode != 0
    log = (workdir / "logs/tiny/digits-cnn8/seed0/base-st/dense/ft-none/evaluate.log").read_text()
    assert f"checkpoint {NODE.format(train='st')}/model.pt cannot be loaded safely" in log, log[-2000:]
    assert "delete it and re-run snakemake" in log
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (workdir / "results").rglob("*") if p.is_file()}
    assert after == digest  # nothing written, nothing removed
