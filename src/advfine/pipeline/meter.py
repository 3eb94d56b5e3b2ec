"""The cost ledger's meter: what a span of a stage's work cost in wall seconds, process CPU seconds (user +
system of the job's process, ``time.process_time``), GPU seconds (CUDA events on the stage's device:
elapsed device time from the span's start to its end, idle gaps included; null off CUDA) and energy.

Energy comes from Zeus (``zeus.monitor.ZeusMonitor``, the optional ``energy`` extra), chosen over
CodeCarbon and CarbonTracker because it only measures, never guesses: it reads the GPU's energy counter
through NVML (no root needed) and the CPU packages' and DRAM's through RAPL where the job may read
/sys/class/powercap, makes no network calls, starts no thread and writes no files. CodeCarbon
falls back to a generic per-thread power and a constant RAM power where it lacks RAPL or knows no TDP
for the CPU (it does so on an AMD EPYC without RAPL: 4 W a thread), and CarbonTracker writes log files
and looks carbon intensity up online. Both counters are the device's, not the process's: other work on the same
GPU or CPU package counts too. Where Zeus is missing or finds no counter, energy is null and
``energy_method`` says why: a total never passes an unmeasured part for zero (``records.Cost``)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from advfine.core.train import restored_times
from advfine.pipeline.records import Cost

POWERCAP = Path("/sys/class/powercap")  # where Linux exposes RAPL's counters (intel-rapl:N, on AMD CPUs too)


def no_counters(device: torch.device) -> str | None:
    """Why a stage on ``device`` has no energy counter to read, or None where NVML or RAPL may be there.
    Importing Zeus takes seconds, every job: a job skips it where Zeus could only report nothing."""
    if device.type == "cuda" or any(POWERCAP.glob("intel-rapl*")):
        return None
    return f"none: no GPU and no RAPL counters under {POWERCAP} (zeus not consulted)"


def _energy_monitor(device: torch.device):
    """(a started Zeus monitor of the devices a stage on ``device`` uses, None) or (None, why there is none)."""
    why = no_counters(device)
    if why:
        return None, why
    zeus_log = logging.getLogger("zeus")
    level = zeus_log.level
    zeus_log.setLevel(logging.ERROR)  # it reports each counter it lacks at INFO/WARNING: the method says it once
    try:
        # deferred: Zeus is optional (the energy extra); without it the ledger records energy as null, saying why
        from zeus.monitor import ZeusMonitor
    except ImportError as exc:
        zeus_log.setLevel(level)
        return None, f"none: zeus is not installed ({exc})"
    try:
        gpus = []
        if device.type == "cuda":
            gpus = [torch.cuda.current_device() if device.index is None else device.index]
        return ZeusMonitor(gpu_indices=gpus, cpu_indices=None), None
    except Exception as exc:  # any failure: a backend that cannot start must not fail the stage
        return None, f"none: zeus could not start ({type(exc).__name__}: {exc})"
    finally:
        zeus_log.setLevel(level)


def _measured_method(measurement) -> tuple[float | None, str]:
    """Joules and the method of a Zeus ``Measurement``; (None, why) when it holds no counter."""
    parts, total = [], 0.0
    gpu = measurement.gpu_energy or {}
    if gpu:
        parts.append(f"NVML (GPU {', '.join(map(str, gpu))})")
        total += sum(gpu.values())
    cpu = measurement.cpu_energy or {}
    if cpu:
        dram = measurement.dram_energy or {}
        parts.append(f"RAPL (CPU package {', '.join(map(str, cpu))}{'; DRAM' if dram else ''})")
        total += sum(cpu.values()) + sum(dram.values())
    if not parts:
        return None, "none: zeus found neither NVML nor readable RAPL counters here"
    return total, "measured: zeus, " + " and ".join(parts)


class Meter:
    """Meters one span of a stage's work on ``device``: ``start()`` then ``stop()``, which returns its
    ``Cost`` (train_macs 0: the stage adds what it computed)."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)

    def start(self) -> "Meter":
        self._monitor, self._why_no_energy = _energy_monitor(self.device)
        if self._monitor is not None:
            self._monitor.begin_window("advfine-stage", sync_execution=self.device.type == "cuda")
        self._cuda = self.device.type == "cuda" and torch.cuda.is_available()
        if self._cuda:
            self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            self._events[0].record()
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        return self

    def stop(self) -> Cost:
        gpu = None
        if self._cuda:  # the span ends when the device has done the work queued in it
            self._events[1].record()
            self._events[1].synchronize()
            gpu = self._events[0].elapsed_time(self._events[1]) / 1000
        cpu = time.process_time() - self._cpu
        wall = time.perf_counter() - self._wall
        energy, method = None, self._why_no_energy
        if self._monitor is not None:
            try:
                energy, method = _measured_method(self._monitor.end_window("advfine-stage",
                                                                           sync_execution=self._cuda))
            except Exception as exc:  # any failure: a failed reading leaves energy null, the stage done
                method = f"none: zeus failed to read its counters ({type(exc).__name__}: {exc})"
        return Cost(wall_time_s=wall, cpu_time_s=cpu, gpu_time_s=gpu, train_macs=0, energy_j=energy,
                    energy_method=method)


def restored_cost(history: list[dict]) -> Cost:
    """What earlier, interrupted attempts spent on the epochs a training run restored (``train.restored_times``):
    their wall and CPU seconds. Their GPU time and energy were not metered, so a resumed stage's energy is null,
    saying so."""
    epochs, wall, cpu = restored_times(history)
    if not epochs:
        return Cost.zero()
    return Cost(wall_time_s=wall, cpu_time_s=cpu, gpu_time_s=None, train_macs=0, energy_j=None,
                energy_method=f"none: {epochs} epoch(s) restored from an interrupted attempt were not metered")
