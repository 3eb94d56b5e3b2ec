"""The GPU pool on a CPU machine: GPU ids are only names here, so the allocation logic (distinct
GPUs for concurrent jobs, waiting when all are busy, release on SIGKILL, CUDA_VISIBLE_DEVICES,
SLURM's renumbered GPUs told apart by UUID, lock files shared between users) is tested with real
processes and real locks, without CUDA (torch.cuda's answers are faked where the pool asks them)."""
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from advfine.core import runtime
from advfine.pipeline import gpu_pool
from advfine.pipeline.gpu_pool import gpu_identities, gpu_slot, job_device, needs_pool, visible_gpu_ids

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


# A GPU job as job.py runs it: CUDA faked available, ``uuids`` the physical GPUs it sees (in its
# CUDA_VISIBLE_DEVICES order); prints its device when it has one, then holds it for HOLD seconds.
JOB = """
import sys, time
sys.path.insert(0, {src!r})
import torch
torch.cuda.is_available = lambda: True
from advfine.pipeline.gpu_pool import job_device
env = {{"SLURM_JOB_ID": {job_id!r}, "CUDA_VISIBLE_DEVICES": {visible!r}}}
with job_device("auto", env, {lock_dir!r}, identities=lambda env: {uuids!r}) as device:
    print(device, flush=True)
    time.sleep({hold})
"""


def start_job(uuids, visible, lock_dir, hold, job_id="1"):
    code = JOB.format(src=str(REPO / "src"), job_id=job_id, visible=visible, lock_dir=str(lock_dir), uuids=uuids,
                      hold=hold)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def read_device(proc, timeout=120.0):
    """The device a job printed, or None if it has none within ``timeout``."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        return None
    return proc.stdout.readline().strip()


def stop(*procs):
    for proc in procs:
        proc.kill()
        proc.wait()


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


def test_the_pool_is_used_for_auto_or_cuda_with_cuda_under_slurm_too(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert needs_pool("auto") and needs_pool("cuda")
    assert not needs_pool("cuda:1")  # the user chose the device
    assert not needs_pool("cpu")
    # inside salloc --gpus=4, snakemake --resources gpu=4 runs four GPU jobs at once: they need the pool
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert needs_pool("auto") and needs_pool("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not needs_pool("auto")


def fake_gpus(monkeypatch, uuids):
    """torch.cuda as on a machine whose visible GPUs have these UUIDs (None: a torch without the attribute)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(uuids))
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: SimpleNamespace(uuid=uuids[i]) if uuids[i] else SimpleNamespace())


def test_the_gpus_are_named_by_uuid_in_the_order_of_the_visible_devices(monkeypatch):
    fake_gpus(monkeypatch, ["8a1f0c2e-0000-1111-2222-333344445555", "77c0aa00-0000-1111-2222-333344445555"])
    assert gpu_identities({"CUDA_VISIBLE_DEVICES": "0,1"}) == ["GPU-8a1f0c2e-0000-1111-2222-333344445555",
                                                               "GPU-77c0aa00-0000-1111-2222-333344445555"]
    # without UUIDs: the CUDA_VISIBLE_DEVICES entry, else the index
    fake_gpus(monkeypatch, [None, None])
    assert gpu_identities({"CUDA_VISIBLE_DEVICES": "4,7"}) == ["4", "7"]
    assert gpu_identities({}) == ["0", "1"]


def test_torch_gives_each_device_a_uuid():
    """The attribute the pool names GPUs by (torch.cuda.get_device_properties(i).uuid) is there."""
    properties = getattr(torch._C, "_CudaDeviceProperties", None)
    if properties is None:
        pytest.skip("a CPU-only torch has no CUDA device properties")
    assert hasattr(properties, "uuid")


def test_slurm_jobs_that_both_see_gpu_0_get_their_own_physical_gpus_at_once(tmp_path, monkeypatch):
    """Two SLURM jobs on one node, each given one GPU renumbered to 0 (CUDA_VISIBLE_DEVICES=0 in both):
    different UUIDs, so neither waits; a job on the same physical GPU as a running one waits."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    first = start_job(["GPU-aaaa"], "0", tmp_path, 600.0, job_id="101")
    try:
        assert read_device(first) == "cuda:0"
        env = {"SLURM_JOB_ID": "102", "CUDA_VISIBLE_DEVICES": "0"}
        with job_device("auto", env, tmp_path, identities=lambda env: ["GPU-bbbb"], timeout_s=0.3) as device:
            assert device == "cuda:0"
        with pytest.raises(TimeoutError, match="no free GPU among \\['GPU-aaaa'\\]"):
            with job_device("auto", env, tmp_path, identities=lambda env: ["GPU-aaaa"], timeout_s=0.3):
                pass
    finally:
        stop(first)


def test_four_concurrent_jobs_on_four_gpus_get_four_devices(tmp_path):
    """``salloc --gpus=4`` then ``snakemake --resources gpu=4``: four GPU jobs at once, one GPU each."""
    uuids = ["GPU-0a", "GPU-1b", "GPU-2c", "GPU-3d"]
    jobs = [start_job(uuids, "0,1,2,3", tmp_path, 600.0, job_id="77") for _ in range(4)]
    try:
        devices = [read_device(job) for job in jobs]
        assert sorted(devices) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
        fifth = start_job(uuids, "0,1,2,3", tmp_path, 0.0, job_id="77")
        try:
            assert read_device(fifth, timeout=3.0) is None  # all four busy: it waits
        finally:
            stop(fifth)
    finally:
        stop(*jobs)


def test_a_gpu_job_gets_the_free_gpu_as_its_device(tmp_path, monkeypatch):
    """snakemake_job hands a rule with ``resources: gpu`` the index of a free visible GPU."""
    from advfine.pipeline.job import snakemake_job

    fake_gpus(monkeypatch, ["5555", "6666"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,6")
    monkeypatch.setenv(gpu_pool.LOCK_DIR_ENV, str(tmp_path))
    holder = start_holder(["GPU-5555", "GPU-6666"], tmp_path, 600.0)
    try:
        assert read_slot(holder) == (0, "GPU-5555")

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


def no_cuda_no_gpu_given(monkeypatch, tmp_path):
    """A CPU machine: no CUDA, no MPS, no sign that a GPU was given (no /dev/nvidia0)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "NVIDIA_DEVICE_NODE", tmp_path / "no-nvidia0")


def test_job_device_never_yields_auto(tmp_path, monkeypatch):
    """benchmarks/gpu_smoke.py hands job_device's answer to torch.device: it must be a device, without
    a pool too (no CUDA; or an explicit cuda:N)."""
    locks = tmp_path / "locks"
    no_cuda_no_gpu_given(monkeypatch, tmp_path)
    for setting in ("auto", "cpu"):
        with job_device(setting, env={}, lock_dir=locks) as device:
            assert device == "cpu" and torch.device(device).type == "cpu"
    # given a GPU that CUDA cannot use: an error that says so, not the CPU
    with pytest.raises(RuntimeError, match="given a GPU \\(CUDA_VISIBLE_DEVICES=0\\)"):
        with job_device("auto", env={"CUDA_VISIBLE_DEVICES": "0"}, lock_dir=locks):
            pass
    fake_gpus(monkeypatch, ["aaaa", "bbbb"])
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_80"])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "fake")
    with job_device("cuda:1", env={}, lock_dir=locks) as device:
        assert device == "cuda:1"
    assert not locks.exists()  # no lock taken


def test_a_gpu_job_on_a_cpu_machine_runs_on_the_cpu(tmp_path, monkeypatch):
    """The README's quick start, --resources gpu=1 on a machine without a GPU: the job's device is cpu."""
    from advfine.pipeline.job import snakemake_job

    no_cuda_no_gpu_given(monkeypatch, tmp_path)
    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(gpu_pool.LOCK_DIR_ENV, str(tmp_path / "locks"))
    smk = SimpleNamespace(log=[str(tmp_path / "job.log")], params=SimpleNamespace(cfg={}), config={"device": "auto"},
                          resources=SimpleNamespace(gpu=1), rule="evaluate", wildcards={}, threads=1)
    with snakemake_job(smk) as running:
        assert running.config["device"] == "cpu"
    assert "device cpu" in Path(tmp_path / "job.log").read_text()


# One user's view of the pool: takes GPU-a or GPU-b, and prints what it got, or why not
OTHER_USER = """
import sys
sys.path.insert(0, {src!r})
from advfine.pipeline.gpu_pool import gpu_slot
with gpu_slot(["GPU-a", "GPU-b"], {lock_dir!r}, poll_s=0.05) as slot:
    print("got", *slot)
    try:
        with gpu_slot(["GPU-a", "GPU-b"], {lock_dir!r}, poll_s=0.05, timeout_s=0.3):
            print("got another")
    except TimeoutError:
        print("both busy")
with gpu_slot(["GPU-a", "GPU-c"], {lock_dir!r}, poll_s=0.05) as slot:
    print("got", *slot)
try:
    with gpu_slot(["GPU-a"], {unusable!r}, timeout_s=0.3):
        pass
except PermissionError as err:
    print(err)
"""


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="runs a process as another user (uid 65534): needs root and setpriv (util-linux)")
def test_another_user_shares_the_pool(tmp_path):
    """On a multi-user machine the second user's jobs use the lock files the first one made: GPU-a is held
    by root, so the other user (uid 65534) gets GPU-b, whose lock file an older advfine made 0644 (locked
    through a read-only file), and creates GPU-c's lock file for everyone."""
    as_other_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    readable = subprocess.run([*as_other_user, sys.executable, "-c", "import torch, advfine.pipeline.gpu_pool"],
                              capture_output=True, text=True, timeout=300, cwd="/",
                              env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    if readable.returncode != 0:  # a checkout or venv under a root-only folder (a fresh clone in a 0700 tmp dir)
        pytest.skip(f"uid 65534 cannot import this checkout's advfine and torch: {readable.stderr.strip()[-200:]}")
    shared = Path(tempfile.mkdtemp(prefix="advfine-pool-test-"))  # under /tmp: tmp_path is root's alone
    try:
        shared.chmod(0o755)
        lock_dir, unusable = shared / "locks", shared / "not-shared"
        unusable.mkdir(mode=0o755)
        with gpu_slot(["GPU-a"], lock_dir) as slot:
            assert slot == (0, "GPU-a")
            legacy = lock_dir / "gpu-GPU-b.lock"
            legacy.touch(mode=0o644)
            legacy.chmod(0o644)
            code = OTHER_USER.format(src=str(REPO / "src"), lock_dir=str(lock_dir), unusable=str(unusable))
            other = subprocess.run([*as_other_user, sys.executable, "-c", code], capture_output=True, text=True,
                                   timeout=300, cwd=shared, env={**os.environ, "HOME": str(shared)})
        assert other.returncode == 0, other.stderr[-3000:]
        lines = other.stdout.splitlines()
        assert lines[:3] == ["got 1 GPU-b", "both busy", "got 1 GPU-c"], other.stdout
        assert str(unusable) in lines[3] and gpu_pool.LOCK_DIR_ENV in lines[3], other.stdout
        assert stat.S_IMODE(lock_dir.stat().st_mode) == 0o1777
        assert stat.S_IMODE((lock_dir / "gpu-GPU-a.lock").stat().st_mode) == 0o666
        assert legacy.read_text() == ""  # read-only: no pid written
        made = (lock_dir / "gpu-GPU-c.lock").stat()
        assert (made.st_uid, stat.S_IMODE(made.st_mode)) == (65534, 0o666)
        with gpu_slot(["GPU-c"], lock_dir, timeout_s=5) as slot:  # and root can use the other user's lock file
            assert slot == (0, "GPU-c")
    finally:
        shutil.rmtree(shared)
