"""The GPU pool on a CPU machine: GPU ids are only names here, so the allocation logic (distinct
GPUs for concurrent jobs, waiting when all are busy, release on SIGKILL, CUDA_VISIBLE_DEVICES,
SLURM) is tested with real processes and real locks, without CUDA."""
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from advfine.pipeline import gpu_pool
from advfine.pipeline.gpu_pool import gpu_slot, job_device, needs_pool, visible_gpu_ids

from conftest import REPO

# A job holding a GPU: prints "<index> <id>" when it has one, then holds it for HOLD seconds.
HOLDER = """
import sys, time
sys.path.insert(0, {src!r})
from advfine.pipeline.gpu_pool import gpu_slot
with gpu_slot({ids!r}, {lock_dir!r}, poll_s=0.05) as (index, gpu_id):
    print(index, gpu_id, flush=True)
    time.sleep({hold})
"""


def start_holder(ids, lock_dir, hold):
    code = HOLDER.format(src=str(REPO / "src"), ids=ids, lock_dir=str(lock_dir), hold=hold)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def read_slot(proc, timeout=120.0):
    """The "<index> <id>" line of a holder, or None if it has none within ``timeout`` (generous: the holder
    imports torch, which takes long on a loaded machine)."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        return None
    line = proc.stdout.readline().split()
    return int(line[0]), line[1]


def test_visible_ids_follow_cuda_visible_devices():
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "GPU-8a1f, GPU-77c0"}) == ["GPU-8a1f", "GPU-77c0"]
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": ""}) == []  # hides every GPU
    assert visible_gpu_ids({}, device_count=3) == ["0", "1", "2"]


def test_concurrent_jobs_get_different_gpus_and_a_third_waits(tmp_path):
    ids = ["4", "7"]  # as if CUDA_VISIBLE_DEVICES=4,7
    first, second = start_holder(ids, tmp_path, 3.0), start_holder(ids, tmp_path, 60.0)
    try:
        slots = {read_slot(first), read_slot(second)}
        assert slots == {(0, "4"), (1, "7")}  # cuda:0 is GPU 4, cuda:1 is GPU 7
        third = start_holder(ids, tmp_path, 0.0)
        try:
            # both taken: the third job waits until the first one finishes, then gets its GPU
            assert read_slot(third, timeout=1.0) is None
            first.wait(timeout=30)
            assert read_slot(third, timeout=30) in slots
        finally:
            third.kill()
            third.wait()
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()


def test_a_killed_job_releases_its_gpu(tmp_path):
    holder = start_holder(["0"], tmp_path, 600.0)
    try:
        assert read_slot(holder) == (0, "0")
        with pytest.raises(TimeoutError, match="no free GPU"):
            with gpu_slot(["0"], tmp_path, poll_s=0.05, timeout_s=0.3):
                pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        with gpu_slot(["0"], tmp_path, timeout_s=5) as slot:
            assert slot == (0, "0")
    finally:
        holder.kill()
        holder.wait()


def test_one_process_releases_the_gpu_when_the_job_ends(tmp_path):
    with gpu_slot(["0", "1"], tmp_path) as slot:
        assert slot == (0, "0")
        with gpu_slot(["0", "1"], tmp_path) as inner:  # flock is per open file: another job's view
            assert inner == (1, "1")
    with gpu_slot(["0", "1"], tmp_path) as slot:
        assert slot == (0, "0")


def test_the_pool_is_used_only_for_auto_or_cuda_with_cuda_and_outside_slurm(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert needs_pool("auto", {}) and needs_pool("cuda", {})
    assert not needs_pool("cuda:1", {})  # the user chose the device
    assert not needs_pool("cpu", {})
    assert not needs_pool("auto", {"SLURM_JOB_ID": "42"})  # SLURM allocated this job's GPUs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not needs_pool("auto", {})


def test_a_gpu_job_gets_the_free_gpu_as_its_device(tmp_path, monkeypatch):
    """snakemake_job hands a rule with ``resources: gpu`` the index of a free visible GPU."""
    import torch

    from advfine.pipeline.job import snakemake_job

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,6")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv(gpu_pool.LOCK_DIR_ENV, str(tmp_path))
    holder = start_holder(["5", "6"], tmp_path, 600.0)
    try:
        assert read_slot(holder) == (0, "5")

        def job(gpu):
            return SimpleNamespace(log=[str(tmp_path / "job.log")], params=SimpleNamespace(cfg={"x": 1}),
                                   config={"device": "auto"}, resources=SimpleNamespace(gpu=gpu),
                                   rule="train_base", wildcards={"seed": "3"}, threads=2)

        with snakemake_job(job(1)) as running:
            assert running.config == {"x": 1, "device": "cuda:1"}  # GPU 6: GPU 5 is busy
            assert (running.seed, running.threads) == (3, 2)
        with snakemake_job(job(0)) as running:
            assert running.config["device"] == "auto"  # aggregation and plotting take no GPU
        assert "device cuda:1" in Path(tmp_path / "job.log").read_text()
    finally:
        holder.kill()
        holder.wait()


def test_provenance_names_the_physical_gpu_and_slurm_job(monkeypatch):
    from advfine.pipeline.provenance import provenance

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,6")
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    record = provenance({"device": "cuda:1", "deterministic": True, "train": {"lr": 0.1}}, 0, "cuda:1")
    assert record["gpu"] == "6" and record["slurm_job_id"] == "1234" and record["device"] == "cuda:1"
    # the hash identifies the settings, not where they ran
    on_cpu = provenance({"device": "cpu", "deterministic": True, "train": {"lr": 0.1}}, 0, "cpu")
    assert record["config_hash"] == on_cpu["config_hash"] and on_cpu["gpu"] is None
    assert on_cpu["deterministic"] is True


def test_job_device_without_cuda_keeps_the_setting(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with job_device("auto", env={}, lock_dir=tmp_path) as device:
        assert device == "auto"
    assert not list(tmp_path.iterdir())  # no lock taken
