"""GPU check: the first thing to run on a machine with CUDA (one GPU, at most about 5 minutes).

It runs every stage function on the GPU on tiny data, every attack in fp32 and bf16 in both norms, two
identical trainings (bitwise), an interrupted and resumed training (bitwise; and a resume across CPU and GPU),
CPU-vs-GPU logits (TF32 off and on, fake-quant INT8/INT2), device syncs per adversarial training step,
synchronized step timings, the GPU pool across two processes and CUDA memory after repeated evaluations.

Each check prints one line, ``PASS name: detail``, ``FAIL name: detail`` or ``SKIP name: reason``
(measurements: ``INFO``); the same goes to a JSON file (``--out``) with the torch, CUDA and GPU details and
the timings. The exit status is 1 if any check failed. A section that starts after ``--budget-s`` seconds
is skipped (reason "budget").

    .venv/bin/python benchmarks/gpu_check.py [--out gpu_check.json] [--budget-s 300] [--cpu]

Without CUDA it says so and exits 0; ``--cpu`` runs the checks on the CPU, smaller, with the GPU-only
halves skipped (what the tests run). Needs no Snakemake and no install (without one, the checkout's src/
is put on the path); jsonschema is required, torchattacks for FAB-T and Square-L2; without NNI pruning
is skipped.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import logging
import os
import platform
import queue
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("advfine") is None:
    sys.exit("gpu_check: the advfine package is not importable: run `make install`, or run this from the checkout "
             "with PYTHONPATH=src")
if importlib.util.find_spec("jsonschema") is None:
    sys.exit("gpu_check: jsonschema is missing (advfine's config validation needs it): install it or put it "
             "on PYTHONPATH")

HAS_NNI = importlib.util.find_spec("nni") is not None  # only pruning needs it

import advfine  # noqa: E402
from advfine.core import evaluate as core_evaluate, runtime, syncs, train as core_train  # noqa: E402
from advfine.core.attacks.pgd import PGDAttack  # noqa: E402
from advfine.core.attacks.threat import ThreatModel  # noqa: E402
from advfine.core.catalog import ATTACKS  # noqa: E402
from advfine.core.datasets import load_dataset  # noqa: E402
from advfine.core.evaluate import Suite, evaluate_model, logits_of  # noqa: E402
from advfine.core.models import build_model, default_arch  # noqa: E402
from advfine.core.quantize import (FakeQuantizePerTensorCPU, calibration_batches, emulate_cuda_path,  # noqa: E402
                                   float_twin, prepare_qat, quantize_ptq)
from advfine.core.runtime import autocast, configure_backends, make_generator, place_model  # noqa: E402
from advfine.core.schedule import TrainSchedule  # noqa: E402
from advfine.core.train import model_tensors, train_model, training_step  # noqa: E402
from advfine.pipeline.config import resolve_config, section_with_defaults, stage_config  # noqa: E402
from advfine.stages import compress, evaluate, finetune, prepare_data, qat, train_base  # noqa: E402

# NNI logs to stdout, which is this script's report: its lines go to stderr with the other progress output
for _handler in logging.getLogger("nni").handlers:
    if isinstance(_handler, logging.StreamHandler):
        _handler.setStream(sys.stderr)

CPU = torch.device("cpu")

# config.yaml made tiny, as --config overrides would: every stage runs in seconds
TINY = {
    "experiment": "gpu-check",
    "data": {"name": "digits", "train_subset": 256, "test_subset": 64},
    "sweep": {"seeds": [0], "prune_sparsities": [0.5], "ptq_bits": [8, 4], "qat_bits": [8], "dense_finetune": []},
    "report": {"prune_sparsity": 0.5, "ptq_bits": 8},
    "train": {"epochs": 1, "lr_drop_epoch": None, "eps_warmup_epochs": 0},
    "qat": {"epochs": 1},
    "finetune": {"epochs": 1, "eps_warmup_epochs": 0},
    "attack": {"eval": {"step_size": 0.1, "steps": 3}},  # 3 steps reach config.yaml's eps (0.2)
    "evaluate": {"apgd": {"steps": 5}, "square": {"queries": 10}, "audit": {"more_effort_samples": 16},
                 "escalation": {"steps": [{"attacks": ["apgd_ce"], "apgd": {"steps": 5}}]}},
    "deployment": {"batch_size": 64, "warmup": 1, "rounds": 1},
    "figure2": {"enabled": False},
}

# The sizes of the GPU run and of --cpu (shared CPUs: smaller batches, fewer timed steps)
SIZES = {"gpu": {"step_batch": 128, "timed_steps": 5, "attack_images": 16},
         "cpu": {"step_batch": 8, "timed_steps": 1, "attack_images": 8}}

# ------------------------------------------------------------------------------------------- recording
class Skip(Exception):
    """Raised inside a check that cannot run here; its message is the reason."""


class Verdict:
    def __init__(self):
        self.ok, self.detail = None, ""

    def __call__(self, ok: bool, detail: str) -> None:
        self.ok, self.detail = bool(ok), detail


class Checks:
    """Every check's status, detail and seconds, printed as they come and kept for the JSON file."""

    def __init__(self, budget_s: float, out):
        self.results: list[dict] = []
        self.timings: dict[str, dict] = {}
        self.budget_s = budget_s
        self.start = time.perf_counter()
        self.out = out  # the real stdout: the sections run with stdout sent to stderr (progress lines)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def report(self, status: str, name: str, detail: str, seconds: float | None = None) -> None:
        self.results.append({"name": name, "status": status, "detail": detail,
                             "seconds": None if seconds is None else round(seconds, 3)})
        print(f"{status} {name}: {detail}", file=self.out, flush=True)

    def info(self, name: str, detail: str, **values) -> None:
        self.report("INFO", name, detail)
        if values:
            self.timings[name] = values

    @contextlib.contextmanager
    def check(self, name: str):
        """One check: the block calls the yielded verdict(ok, detail); raising Skip skips it, any other
        exception fails it."""
        verdict, start = Verdict(), time.perf_counter()
        try:
            yield verdict
        except Skip as skip:
            self.report("SKIP", name, str(skip), time.perf_counter() - start)
            return
        except Exception as err:  # noqa: BLE001 -- a crash is a failed check, the others still run
            traceback.print_exc()
            self.report("FAIL", name, f"{type(err).__name__}: {err}".splitlines()[0], time.perf_counter() - start)
            return
        seconds = time.perf_counter() - start
        if verdict.ok is None:
            self.report("FAIL", name, "the check gave no verdict", seconds)
        else:
            self.report("PASS" if verdict.ok else "FAIL", name, verdict.detail, seconds)

    def section(self, name: str, function, run) -> None:
        """Run one section of checks, unless the budget is spent; a crash outside its checks fails it."""
        if self.elapsed() > self.budget_s:
            self.report("SKIP", name, f"budget: {self.elapsed():.0f} s of {self.budget_s:.0f} s used")
            return
        try:
            function(self, run)
        except Exception as err:  # noqa: BLE001
            traceback.print_exc()
            self.report("FAIL", f"{name} section", f"{type(err).__name__}: {err}".splitlines()[0])


# ------------------------------------------------------------------------------------------- shared setup
class Run:
    """What the sections share: the device, the sizes, a scratch folder, the data and a trained CNN8."""

    def __init__(self, cpu_mode: bool, threads: int, tmp: Path):
        self.cpu_mode = cpu_mode
        self.device = CPU if cpu_mode else torch.device("cuda:0")
        self.size = SIZES["cpu" if cpu_mode else "gpu"]
        self.threads = threads
        self.tmp = tmp
        self.data = load_dataset(section_with_defaults("data", {"name": "digits", "train_subset": 256}))
        self.arch = default_arch("cnn8", 1, 10, 28, self.data.mean, self.data.std)
        self._base = None

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def fresh_model(self, seed: int = 0) -> torch.nn.Module:
        torch.manual_seed(seed)
        return build_model(self.arch)

    def base_model(self) -> torch.nn.Module:
        """A CNN8 trained for one standard epoch on the 256 training images (on the CPU, eval mode)."""
        if self._base is None:
            model = self.fresh_model()
            train_model(model, self.data.train_x, self.data.train_y, schedule(1), None, 0, self.device,
                        desc="base model")
            self._base = model.cpu().eval()
        return copy.deepcopy(self._base)

    def calibration(self) -> list[torch.Tensor]:
        return calibration_batches(self.data.train_x, 2, 64, 0)

    def variants(self) -> dict[str, tuple[torch.nn.Module, str]]:
        """The models whose training steps are counted and timed: name -> (model on the device, precision)."""
        base, calib = self.base_model(), self.calibration()
        models = {"dense fp32": (base, "fp32"), "dense bf16": (copy.deepcopy(base), "bf16"),
                  "PTQ INT8": (quantize_ptq(base, 8, calib), "fp32"), "QAT INT8": (prepare_qat(base, 8, calib), "fp32"),
                  "INT1": (quantize_ptq(base, 1, calib), "fp32")}
        return {name: (place_model(model, self.device), precision) for name, (model, precision) in models.items()}


def schedule(epochs: int, batch_size: int = 32) -> TrainSchedule:
    return TrainSchedule.from_config(section_with_defaults(
        "train", {"epochs": epochs, "batch_size": batch_size, "lr": 0.02, "momentum": 0.9, "lr_drop_epoch": None,
                  "lr_after_drop": 0.01, "eps_warmup_epochs": 0}))


def training_attack(steps: int = 2) -> PGDAttack:
    return PGDAttack(ThreatModel("linf", 0.1), step_size=0.25 / steps, steps=steps, random_start=True)


def set_tf32(enabled: bool) -> None:
    """TF32 matmuls and convolutions on or off (the package's setter where it has one)."""
    setter = getattr(runtime, "set_tf32", None)
    if setter is not None:
        setter(enabled)
    else:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def gpu_only(run: Run) -> None:
    if run.cpu_mode:
        raise Skip("GPU only (--cpu)")


# ------------------------------------------------------------------------------------------- 1. environment
def check_environment(checks: Checks, run: Run) -> dict:
    """torch, CUDA, the GPU and whether this torch wheel has kernels for it; returns them for the JSON file."""
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "gpu": None, "capability": None, "driver": None, "arch_list": [],
           "nni": HAS_NNI, "torchattacks": importlib.util.find_spec("torchattacks") is not None}
    with checks.check("environment") as verdict:
        if run.cpu_mode:
            verdict(True, f"torch {env['torch']} on the CPU (--cpu), {run.threads} thread(s), NNI "
                          f"{'present' if HAS_NNI else 'missing'}, torchattacks "
                          f"{'present' if env['torchattacks'] else 'missing'}")
        else:
            props = torch.cuda.get_device_properties(run.device)
            major, minor = props.major, props.minor
            env |= {"gpu": props.name, "capability": f"{major}.{minor}", "arch_list": torch.cuda.get_arch_list(),
                    "driver": driver_version(), "gpu_memory_gib": round(props.total_memory / 2**30, 1)}
            # a wheel runs a GPU with its own sm_XY, or JIT-compiles PTX (compute_XY) of an older capability
            covered = f"sm_{major}{minor}" in env["arch_list"] or any(
                arch.startswith("compute_") and arch_number(arch) <= major * 10 + minor for arch in env["arch_list"])
            verdict(covered, f"torch {env['torch']}, CUDA {env['cuda']}, driver {env['driver']}, {props.name} "
                             f"(capability {major}.{minor}, {env['gpu_memory_gib']} GiB); wheel archs "
                             f"{' '.join(env['arch_list'])} {'cover' if covered else 'do NOT cover'} it")
    return env


def arch_number(arch: str) -> int:
    """The capability of an arch list entry as a number: "compute_90a" -> 90."""
    return int("".join(ch for ch in arch.partition("_")[2] if ch.isdigit()) or 0)


def driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.split()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


# ------------------------------------------------------------------------------------------- 2. stages
def recorded_devices(path: Path) -> set[str]:
    """The devices a stage's JSON record names: its provenance's, its last lineage entry's, its own."""
    record = json.loads(path.read_text())
    found = {record["provenance"]["device"], record["stages"][-1]["device"]}
    if "device" in record:
        found.add(record["device"])
    return found


def check_stages(checks: Checks, run: Run) -> None:
    """Every model stage's run() on tiny digits with config.yaml's settings, made tiny."""
    config = resolve_config([REPO / "config.yaml"], TINY, REPO)
    device = str(run.device)
    out = run.tmp / "stages"
    out.mkdir()

    def settings(stage: str) -> dict:
        return stage_config(config, stage) | {"device": device}

    def needs(*paths: Path) -> None:
        for path in paths:
            if not path.exists():
                raise Skip(f"needs {path.name}, which an earlier stage did not write")

    def on_device(path: Path, what: str) -> tuple[bool, str]:
        devices = recorded_devices(path)
        return devices == {device}, f"{what}; recorded device {', '.join(sorted(devices))}"

    data = out / "data.pt"
    with checks.check("stage prepare_data") as verdict:
        info = prepare_data.run(settings("prepare_data"), out_data=data)
        verdict(info["n_train"] == 256 and info["n_test"] == 64,
                f"{info['n_train']} training, {info['n_test']} test images")

    for base in ("st", "rb"):
        with checks.check(f"stage train_base {base}") as verdict:
            needs(data)
            record = train_base.run(settings("train_base"), data=data, train=base, seed=0, out_model=out / f"{base}.pt",
                                    out_metrics=out / f"{base}.json", threads=run.threads)
            loss = record.details["history"][-1]["loss"]
            ok, detail = on_device(out / f"{base}.json", f"loss {loss:.3f}")
            verdict(ok and torch.isfinite(torch.tensor(loss)), detail)

    for compression, base in (("prune-0.5", "st"), ("ptq-int8", "rb"), ("ptq-int4", "rb")):
        with checks.check(f"stage compress {compression}") as verdict:
            if compression.startswith("prune") and not HAS_NNI:
                raise Skip("NNI is not installed (pruning needs it)")
            needs(data, out / f"{base}.pt")
            compress.run(settings("compress"), data=data, compression=compression, seed=0, model=out / f"{base}.pt",
                         metrics=out / f"{base}.json", out_model=out / f"{compression}.pt",
                         out_metrics=out / f"{compression}.json", threads=run.threads)
            verdict(*on_device(out / f"{compression}.json", "written"))

    with checks.check("stage qat int8") as verdict:
        needs(data, out / "rb.pt")
        record = qat.run(settings("qat"), data=data, bits=8, train="rb", seed=0, out_model=out / "qat-int8.pt",
                         out_metrics=out / "qat-int8.json", model=out / "rb.pt", metrics=out / "rb.json",
                         threads=run.threads)
        verdict(*on_device(out / "qat-int8.json", f"loss {record.details['history'][-1]['loss']:.3f}"))

    with checks.check("stage finetune ptq-int8 ad") as verdict:
        needs(data, out / "ptq-int8.pt")
        record = finetune.run(settings("finetune"), data=data, compression="ptq-int8", mode="ad", seed=0,
                              model=out / "ptq-int8.pt", metrics=out / "ptq-int8.json", out_model=out / "ft.pt",
                              out_metrics=out / "ft.json", threads=run.threads)
        verdict(*on_device(out / "ft.json", f"loss {record.details['history'][-1]['loss']:.3f}"))

    for compression, tuned, model, metrics in (("dense", "none", "rb.pt", "rb.json"),
                                               ("ptq-int8", "ad", "ft.pt", "ft.json")):
        with checks.check(f"stage evaluate {compression} {tuned}") as verdict:
            needs(data, out / model)
            result = out / f"eval-{compression}.json"
            record = evaluate.run(settings("evaluate"), data=data, experiment="gpu-check", train="rb",
                                  compression=compression, finetune=tuned, seed=0, model=out / model,
                                  metrics=out / metrics, out_eval=result, out_samples=result.with_suffix(".csv"),
                                  threads=run.threads)
            ok, detail = on_device(result, f"clean {record.clean_acc:.3f}, worst case {record.robust_acc:.3f}")
            verdict(ok and 0 <= record.robust_acc <= record.clean_acc, detail)


# ------------------------------------------------------------------------------------------- 3. attacks
def check_attacks(checks: Checks, run: Run) -> None:
    """Every attack of the suite in fp32 and bf16, L-inf and L2: it runs, and its points are finite, in the
    threat model's ball and in [0, 1]."""
    device, n = run.device, run.size["attack_images"]
    model = place_model(run.base_model(), device).eval()
    quantized = place_model(quantize_ptq(run.base_model(), 8, run.calibration()), device).eval()
    twin = place_model(float_twin(quantized), device).eval()
    x, y = run.data.test_x[:n].to(device), run.data.test_y[:n].to(device)
    generator = torch.Generator().manual_seed(0)
    noise = [torch.rand(x.shape, generator=generator).to(device) for _ in range(2)]
    for norm, eps, step in (("linf", 0.1, 0.025), ("l2", 1.0, 0.25)):
        suite = Suite(pgd=PGDAttack(ThreatModel(norm, eps), step_size=step, steps=5), attacks=ATTACKS,
                      apgd_steps=5, target_classes=2, fab_steps=5, square_queries=10)
        for precision in ("fp32", "bf16"):
            for name in ATTACKS:
                with checks.check(f"attack {name} {norm} {precision}") as verdict:
                    # the transfer attack is crafted on a fake-quant model's float twin; the others on the model
                    attacked, source = (quantized, twin) if name == "transfer" else (model, None)
                    # the package has no public call for one attack on one batch: _craft is what run_suite calls
                    with autocast(device, precision):
                        x_adv = core_evaluate._craft(name, suite, attacked, source, x, y, noise, 0, 10)
                    with torch.no_grad():
                        finite = bool(torch.isfinite(x_adv).all())
                        inside = suite.threat.contains(x_adv.float(), x)  # the ball and [0, 1]
                        fooled = int((attacked(x_adv.float()).argmax(1) != y).sum())
                    ok = x_adv.shape == x.shape and finite and bool(inside.all())
                    verdict(ok, f"{int(inside.sum())}/{n} points in the ball and [0, 1], finite {finite}, "
                                f"{fooled}/{n} misclassified, dtype {str(x_adv.dtype).removeprefix('torch.')}")


# ------------------------------------------------------------------------------------------- 4. determinism
def train_small(run: Run, device: torch.device, epochs: int, resume: Path | None = None):
    """A short PGD training from the same initial weights and seed (128 images); returns (model, history)."""
    model = run.fresh_model()
    history = train_model(model, run.data.train_x[:128], run.data.train_y[:128], schedule(epochs), training_attack(),
                          7, device, desc="small", resume_path=resume)
    return model, history


def same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> tuple[bool, int]:
    """Whether every parameter and buffer is bitwise equal; and how many differ."""
    ta, tb = model_tensors(a), model_tensors(b)
    differ = [key for key in ta if not torch.equal(ta[key], tb[key])]
    return not differ and ta.keys() == tb.keys(), len(differ)


def check_determinism(checks: Checks, run: Run) -> None:
    with checks.check("determinism: two identical trainings are bitwise equal") as verdict:
        configure_backends(run.device, deterministic=True)
        first, _ = train_small(run, run.device, 1)
        second, _ = train_small(run, run.device, 1)
        equal, differ = same_tensors(first, second)
        verdict(equal, f"1 epoch PGD training on {run.device}, deterministic=true: "
                       + ("all tensors equal" if equal else f"{differ} tensors differ"))


# ------------------------------------------------------------------------------------------- 5. resume
class Interrupted(Exception):
    """Stands in for a kill right after a resume checkpoint was written."""


@contextlib.contextmanager
def interrupted_after_first_epoch():
    """Let train_model write its first resume checkpoint, then stop it as a kill would."""
    real_save = core_train.save_resume

    def save_then_stop(path, payload):
        real_save(path, payload)
        raise Interrupted

    core_train.save_resume = save_then_stop
    try:
        with contextlib.suppress(Interrupted):
            yield
    finally:
        core_train.save_resume = real_save


def check_resume(checks: Checks, run: Run) -> None:
    with checks.check("resume: interrupted after epoch 1 and resumed equals uninterrupted") as verdict:
        configure_backends(run.device, deterministic=True)
        reference, _ = train_small(run, run.device, 2)
        resume = run.tmp / ".same-device.resume.pt"
        with interrupted_after_first_epoch():
            train_small(run, run.device, 2, resume)
        resumed, history = train_small(run, run.device, 2, resume)
        restored = [bool(r.get("restored")) for r in history]
        equal, differ = same_tensors(reference, resumed)
        verdict(restored == [True, False] and equal,
                f"on {run.device}: restored epochs {restored}, "
                + ("all tensors equal" if equal else f"{differ} tensors differ"))

    for writer, reader in (("cuda", "cpu"), ("cpu", "cuda")):
        with checks.check(f"resume: written on {writer}, resumed on {reader}") as verdict:
            gpu_only(run)
            writer, reader = (run.device if name == "cuda" else CPU for name in (writer, reader))
            resume = run.tmp / f".{writer.type}-to-{reader.type}.resume.pt"
            with interrupted_after_first_epoch():
                train_small(run, writer, 2, resume)
            _, history = train_small(run, reader, 2, resume)
            resumed = bool(history[0].get("restored"))
            verdict(True, "resumed after epoch 1" if resumed else "started over (the checkpoint was not used)")


# ------------------------------------------------------------------------------------------- 6. agreement
def check_agreement(checks: Checks, run: Run) -> None:
    """The same model and images on the CPU and the GPU: logits with TF32 off (and on), and the
    predictions of fake-quant INT8 and INT2 models; and our CPU fake-quant kernel against torch's."""
    x = run.data.test_x
    kernel_device = CPU if run.cpu_mode else run.device
    generator = torch.Generator().manual_seed(0)
    scale, zero_point = 0.0123, 3
    inputs = {"random": torch.randn(1_000_000, generator=generator) * 2,
              "near ties": (torch.randint(-300, 300, (100_000,), generator=generator) + 0.5) * scale}
    with checks.check(f"fake-quant per-tensor: ours (CPU) rounds like torch's {kernel_device.type} kernel") as verdict:
        mismatches = {}
        for what, values in inputs.items():
            ours = FakeQuantizePerTensorCPU.apply(values.clone(), scale, zero_point, 0, 255)
            torch_kernel = torch.fake_quantize_per_tensor_affine(values.to(kernel_device), scale, zero_point, 0, 255)
            mismatches[what] = int((ours != torch_kernel.cpu()).sum())
        verdict(not any(mismatches.values()), ", ".join(f"{n} of {len(inputs[what]):,} {what} values round differently"
                                                        for what, n in mismatches.items()))

    with checks.check("CPU vs GPU logits, TF32 off") as verdict:
        gpu_only(run)
        on_cpu, on_gpu = cpu_and_gpu_logits(run, run.base_model(), tf32=False)
        diff, agree = (on_cpu - on_gpu).abs().max().item(), agreement(on_cpu, on_gpu)
        largest = on_cpu.abs().max().item()
        verdict(diff <= 1e-4 * max(largest, 1.0) and agree >= 0.99,
                f"max |diff| {diff:.2e} (logits up to {largest:.1f}), predictions agree on {agree:.2%} of {len(x)}")
    if not run.cpu_mode:
        on_cpu, on_gpu = cpu_and_gpu_logits(run, run.base_model(), tf32=True)
        diff, agree = (on_cpu - on_gpu).abs().max().item(), agreement(on_cpu, on_gpu)
        checks.info("CPU vs GPU logits, TF32 on", f"max |diff| {diff:.2e}, predictions agree on {agree:.2%}",
                    max_abs_diff=diff, agreement=agree)

    for bits in (8, 2):
        with checks.check(f"CPU vs GPU predictions, fake-quant INT{bits}") as verdict:
            gpu_only(run)
            quantized = quantize_ptq(run.base_model(), bits, run.calibration())
            on_cpu, on_gpu = cpu_and_gpu_logits(run, quantized, tf32=False)
            agree = agreement(on_cpu, on_gpu)
            verdict(agree >= 0.99, f"predictions agree on {agree:.2%} of {len(x)} (TF32 off), max |logit diff| "
                                   f"{(on_cpu - on_gpu).abs().max().item():.2e}")


def cpu_and_gpu_logits(run: Run, model: torch.nn.Module, tf32: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of ``model`` (on the CPU) and of a copy on the GPU on every test image, TF32 on or off."""
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        set_tf32(tf32)
        on_gpu = logits_of(place_model(copy.deepcopy(model), run.device), run.data.test_x, 256, run.device)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
    return logits_of(model, run.data.test_x, 256, CPU), on_gpu


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.argmax(1) == b.argmax(1)).float().mean().item()


# ------------------------------------------------------------------------------------------- 7. syncs
def count_syncs(step, device: torch.device) -> int:
    """Device syncs in one call of ``step``: CUDA's sync debug warnings; on the CPU, the host reads of the
    CUDA code path (``quantize.emulate_cuda_path``), counted by ``advfine.core.syncs``."""
    if device.type == "cuda":
        return syncs.cuda_syncs(step, device)
    with emulate_cuda_path():
        return syncs.count(step).syncs


def adversarial_step(run: Run, model: torch.nn.Module, precision: str, pgd_steps: int):
    """One SGD step of PGD adversarial training on a fixed batch, as a function of no arguments."""
    batch = run.size["step_batch"]
    x = run.data.train_x[:batch].to(run.device).contiguous(memory_format=torch.channels_last)
    y = run.data.train_y[:batch].to(run.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator, attack = make_generator(0, run.device), training_attack(pgd_steps)
    return lambda: training_step(model, optimizer, x, y, attack, generator, precision)


def check_syncs(checks: Checks, run: Run) -> None:
    with checks.check("syncs: fake-quant adds <= 2 per PGD-10 training step over dense") as verdict:
        counts = {}
        for name, (model, precision) in run.variants().items():
            if name == "dense bf16":
                continue
            step = adversarial_step(run, model, precision, 10)
            step()  # warm-up: lazy initialization is not a per-step cost
            counts[name] = count_syncs(step, run.device)
        checks.timings["syncs per step"] = counts
        extra = {name: n - counts["dense fp32"] for name, n in counts.items() if name != "dense fp32"}
        verdict(all(n <= 2 for n in extra.values()),
                f"{'CUDA sync warnings' if run.device.type == 'cuda' else 'host reads of the CUDA code path, counted on the CPU,'} per step: "
                + ", ".join(f"{name} {n}" for name, n in counts.items()))


# ------------------------------------------------------------------------------------------- 8. timings
def check_timings(checks: Checks, run: Run) -> None:
    """One adversarial training step (PGD-10; --cpu: PGD-2) per model, synchronized, warm-up excluded."""
    pgd_steps = 2 if run.cpu_mode else 10
    batch, repeats = run.size["step_batch"], run.size["timed_steps"]
    dense_s = None
    for name, (model, precision) in run.variants().items():
        if precision == "bf16" and run.cpu_mode and not runtime.cpu_has_native_bf16():
            checks.report("SKIP", f"timing {name}", "this CPU has no bf16 units (emulated: not a measurement)")
            continue
        step = adversarial_step(run, model, precision, pgd_steps)
        step()
        run.sync()
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        run.sync()
        seconds = (time.perf_counter() - start) / repeats
        dense_s = dense_s or seconds
        checks.info(f"timing {name}", f"{batch / seconds:.0f} images/s, {seconds / dense_s:.2f}x dense fp32's step "
                                      f"time (PGD-{pgd_steps} step, batch {batch})",
                    images_per_s=batch / seconds, step_s=seconds, ratio_to_dense=seconds / dense_s)


# ------------------------------------------------------------------------------------------- 9. GPU pool
# A job taking a GPU: prints "got <device>" when it has it, releases it when a line arrives on stdin.
HOLDER = """
import sys
from pathlib import Path
from advfine.pipeline.gpu_pool import gpu_slot, job_device
lock_dir, fake = Path(sys.argv[1]), sys.argv[2] == "fake"
print("trying", flush=True)
with (gpu_slot(["0"], lock_dir, poll_s=0.05) if fake else job_device("auto", lock_dir=lock_dir)) as got:
    print("got", got, flush=True)
    sys.stdin.readline()
"""


class Lines:
    """A process's stdout lines as they come (a thread reads them: a pipe's buffered reader hides lines
    from select)."""

    def __init__(self, proc: subprocess.Popen):
        self.queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.queue.put(line.strip()) for line in proc.stdout], daemon=True).start()

    def next(self, timeout: float) -> str | None:
        """The next line, or None if none comes within ``timeout`` seconds."""
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None


def check_gpu_pool(checks: Checks, run: Run) -> None:
    name = "GPU pool: two processes, " + ("fake GPU id 0 (--cpu)" if run.cpu_mode else "job_device('auto')")
    with checks.check(name) as verdict:
        # this advfine first; no SLURM_JOB_ID: under SLURM the pool is off by design
        env = {key: value for key, value in os.environ.items() if key != "SLURM_JOB_ID"}
        src = str(Path(advfine.__file__).parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
        argv = [sys.executable, "-c", HOLDER, str(run.tmp / "locks"), "fake" if run.cpu_mode else "auto"]
        procs = []
        try:
            first = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
            procs.append(first)
            first_lines = Lines(first)
            if first_lines.next(120) != "trying" or not (got_first := first_lines.next(60) or "").startswith("got "):
                raise RuntimeError("the first process took no GPU")
            got_first = got_first.removeprefix("got ")
            second = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
            procs.append(second)
            second_lines = Lines(second)
            if second_lines.next(120) != "trying":
                raise RuntimeError("the second process did not start")
            early = second_lines.next(2.0)  # with one GPU it must wait while the first holds it
            early = early and early.removeprefix("got ")
            if early is not None:
                several = not run.cpu_mode and torch.cuda.device_count() > 1
                verdict(several and early != got_first, f"first {got_first!r}, second {early!r} without waiting"
                        + ("" if several else " on the only GPU"))
                return
            first.stdin.write("release\n")
            first.stdin.flush()
            got_second = (second_lines.next(30) or "none within 30 s").removeprefix("got ")
            verdict(got_second == got_first, f"the second waited while the first held {got_first}, then got "
                                             f"{got_second} when it was released")
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()


# ------------------------------------------------------------------------------------------- 10. memory
def check_memory(checks: Checks, run: Run) -> None:
    with checks.check("CUDA memory: repeated evaluations return to the baseline") as verdict:
        gpu_only(run)
        model = place_model(run.base_model(), run.device)
        suite = Suite(pgd=PGDAttack(ThreatModel("linf", 0.1), step_size=0.025, steps=5),
                      attacks=("pgd", "apgd_ce", "square"), apgd_steps=5, square_queries=10)
        x, y = run.data.test_x[:128], run.data.test_y[:128]
        allocated = []
        for _ in range(3):  # the first is the warm-up: lazily made workspaces stay
            evaluate_model(model, x, y, suite, 64, run.device, 0)
            run.sync()
            allocated.append(torch.cuda.memory_allocated(run.device))
        grown = max(allocated[1:]) - allocated[0]
        verdict(grown <= 0, f"allocated after each evaluation: {', '.join(f'{a / 2**20:.1f}' for a in allocated)} MiB")


SECTIONS = (("environment", None), ("stages", check_stages), ("attacks", check_attacks),
            ("determinism", check_determinism), ("resume", check_resume), ("agreement", check_agreement),
            ("syncs", check_syncs), ("timings", check_timings), ("gpu pool", check_gpu_pool),
            ("memory", check_memory))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json", help="the JSON file of the results")
    parser.add_argument("--budget-s", type=float, default=300.0, help="sections starting later are skipped")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 with --cpu, else 8)")
    parser.add_argument("--cpu", action="store_true", help="run the checks on the CPU (small), to test this script")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.cpu:
        print("no CUDA device here: nothing to check (run this on a GPU machine; --cpu tests the script)")
        return
    threads = args.threads or (1 if args.cpu else min(8, os.cpu_count() or 1))
    torch.set_num_threads(threads)
    checks = Checks(args.budget_s, sys.stdout)
    print(f"gpu_check: {sys.executable} {' '.join(sys.argv)}; advfine from {Path(advfine.__file__).parent}; "
          f"PYTHONPATH={os.environ.get('PYTHONPATH', '')!r}", flush=True)
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        run = Run(args.cpu, threads, Path(tmp))
        environment = check_environment(checks, run)
        for name, function in SECTIONS[1:]:
            checks.section(name, function, run)
        if not run.cpu_mode:
            peak = torch.cuda.max_memory_allocated(run.device) / 2**20
            checks.info("CUDA peak memory", f"{peak:.0f} MiB allocated at most", peak_mib=peak)
    total = checks.elapsed()
    counts = Counter(result["status"] for result in checks.results)
    failed = [result["name"] for result in checks.results if result["status"] == "FAIL"]
    Path(args.out).write_text(json.dumps({
        "command": [sys.executable, *sys.argv], "advfine": str(Path(advfine.__file__).parent), "cpu_mode": args.cpu,
        "device": str(run.device), "threads": threads, **environment, "budget_s": args.budget_s,
        "total_s": round(total, 1), "checks": checks.results, "timings": checks.timings}, indent=1) + "\n")
    print(f"\n{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped in {total:.0f} s "
          f"(results in {args.out})" + (f"; failed: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
