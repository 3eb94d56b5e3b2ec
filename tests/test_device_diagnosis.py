"""device: auto never falls back to the CPU in a job that was given a GPU, and every refusal says why CUDA
is unusable (CPU-only torch, missing or old driver, a GPU the wheel has no kernels for). torch.cuda's
answers and the environment are faked: this runs on a CPU machine."""
import pytest
import torch

from advfine.core import runtime
from advfine.core.runtime import cuda_diagnosis, gpu_expected, resolve_device


@pytest.fixture
def cpu_machine(monkeypatch, tmp_path):
    """No CUDA, no MPS, no /dev/nvidia0; a CUDA 12.6 build of torch unless a test says otherwise."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(runtime, "NVIDIA_DEVICE_NODE", tmp_path / "nvidia0")
    monkeypatch.setattr(runtime, "nvidia_driver", lambda: None)
    return tmp_path / "nvidia0"


def gpu(monkeypatch, capability, arch_list, name="Tesla V100-SXM2-16GB"):
    """One visible GPU of ``capability`` and a wheel with kernels for ``arch_list``."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: arch_list)


def test_the_signs_that_a_job_was_given_a_gpu(cpu_machine):
    for env in ({"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "GPU-8a1f"}, {"SLURM_JOB_GPUS": "3"},
                {"SLURM_STEP_GPUS": "0,1"}, {"SLURM_GPUS_ON_NODE": "2"}):
        assert gpu_expected(env, cpu_machine) == "{}={}".format(*next(iter(env.items())))
    for env in ({}, {"CUDA_VISIBLE_DEVICES": ""}, {"CUDA_VISIBLE_DEVICES": "-1"},
                {"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, {"SLURM_GPUS_ON_NODE": "0"}, {"SLURM_JOB_ID": "7"}):
        assert gpu_expected(env, cpu_machine) is None, env
    cpu_machine.touch()  # the driver's device node
    assert gpu_expected({}, cpu_machine) == f"{cpu_machine} exists"
    # a SLURM job given no GPU on a GPU node sees the node too: there SLURM's variables decide
    assert gpu_expected({"SLURM_JOB_ID": "7"}, cpu_machine) is None


def test_auto_on_a_cpu_machine_is_the_cpu(cpu_machine):
    assert resolve_device("auto", {}) == torch.device("cpu")
    assert resolve_device("cpu", {}) == torch.device("cpu")


def test_auto_refuses_the_cpu_with_a_cpu_only_torch_in_a_gpu_job(cpu_machine, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(RuntimeError) as err:
        resolve_device("auto", {"SLURM_JOB_GPUS": "3"})
    message = str(err.value)
    assert "given a GPU (SLURM_JOB_GPUS=3)" in message and "CPU-only build" in message
    assert "--index-url https://download.pytorch.org/whl/cu" in message and "device: cpu" in message


def test_auto_refuses_the_cpu_without_a_driver(cpu_machine, monkeypatch):
    cpu_machine.touch()
    with pytest.raises(RuntimeError, match=r"given a GPU \(.*nvidia0 exists\).*built for CUDA 12\.6.*"
                                           r"no NVIDIA driver found"):
        resolve_device("auto", {})
    monkeypatch.setattr(runtime, "nvidia_driver", lambda: "nvidia-smi: driver 470.57.02, compute capability 8.0")
    with pytest.raises(RuntimeError, match=r"too old for CUDA 12\.6.*driver 470\.57\.02"):
        resolve_device("auto", {"CUDA_VISIBLE_DEVICES": "1"})
    # an explicit CUDA device says the same
    with pytest.raises(RuntimeError, match=r"'cuda:0' was asked for but CUDA is not available: .*driver 470\.57\.02"):
        resolve_device("cuda:0", {})


def test_a_gpu_the_wheel_has_no_kernels_for_is_refused(cpu_machine, monkeypatch):
    """A V100 (sm_70) with a wheel built for sm_75 and later: CUDA is available, the first kernel fails."""
    gpu(monkeypatch, (7, 0), ["sm_75", "sm_80", "sm_86", "sm_90"])
    for name in ("auto", "cuda", "cuda:0"):
        with pytest.raises(RuntimeError) as err:
            resolve_device(name, {})
        message = str(err.value)
        assert f"device: '{name}'" in message and "Tesla V100-SXM2-16GB" in message
        assert "compute capability sm_70" in message and "sm_75 sm_80 sm_86 sm_90 only" in message


def test_a_gpu_the_wheel_has_kernels_for_is_used(cpu_machine, monkeypatch):
    gpu(monkeypatch, (8, 6), ["sm_75", "sm_80", "sm_90"], name="RTX A6000")  # sm_80 code runs on sm_86
    assert cuda_diagnosis() is None
    assert resolve_device("auto", {}) == torch.device("cuda")
    assert resolve_device("cuda:0", {}) == torch.device("cuda:0")


@pytest.mark.parametrize("capability, arch_list, runs", [
    ((8, 6), ["sm_80"], True),           # machine code: same major, later minor
    ((8, 0), ["sm_86"], False),          # not an earlier minor
    ((12, 0), ["sm_90", "sm_100"], False),  # not another major
    ((12, 0), ["sm_90", "compute_90"], True),  # PTX is compiled for later GPUs
    ((9, 0), ["sm_90a"], True),
    ((7, 0), ["sm_75", "sm_80"], False),
])
def test_which_gpus_a_wheel_runs_on(capability, arch_list, runs):
    assert runtime._runs_on(capability, arch_list) is runs
