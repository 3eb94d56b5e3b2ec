import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from advfine.core.schedule import TrainSchedule
from advfine.pipeline.config import section_with_defaults, stage_config, validate_config

REPO = Path(__file__).resolve().parents[1]
SHARED_FMNIST = REPO.parent / "shared" / "data" / "FashionMNIST" / "raw"


def src_first(checkout: Path = REPO) -> str:
    """A PYTHONPATH with ``checkout``'s src/ first: a subprocess imports that checkout's advfine, not a copy
    installed in the environment."""
    return os.pathsep.join(filter(None, [str(checkout / "src"), os.environ.get("PYTHONPATH")]))


# Every subprocess of the tests (Snakemake, its jobs, the benchmarks) runs this checkout's package, as the
# tests themselves do (pyproject's pytest pythonpath).
os.environ["PYTHONPATH"] = src_first()

# The seed of the trained fixtures (model init and training order): a test's verdict must not hang on one
# trajectory, which also differs between CPUs (AVX-512, AVX2); `ADVFINE_TEST_SEED=3 pytest tests/test_x.py`
# checks it under another.
FIXTURE_SEED = int(os.environ.get("ADVFINE_TEST_SEED", "0"))
# How the trained fixtures train a CNN8 on digits: SGD with momentum at a small rate. Over seeds 0-5 on AVX-512
# and AVX2 kernels, 4 epochs on the 512 tiny digits gave 87-96 % test accuracy (3 epochs: 88-94 %) and 2 epochs
# on all digits 91-97 %; lr 0.1 without momentum (the tiny config's) ended anywhere from 34 % to 87 %, and lr
# 0.05 with momentum once collapsed to two classes.
FIXTURE_TRAINING = {"batch_size": 32, "lr": 0.02, "momentum": 0.9, "lr_drop_epoch": None, "lr_after_drop": 0.01}
# The same as tiny_config overrides, for fixtures trained through a config (stages, the train section)
FIXTURE_TRAIN_CONFIG = {f"train.{key}": value for key, value in FIXTURE_TRAINING.items()}


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    # Tiny models gain nothing from threads; with a busy second core, 2 threads were ~100x slower.
    torch.set_num_threads(1)


def small_cnn8_arch(mean=(0.5,), std=(0.5,)) -> dict:
    """A narrow CNN8 (8-8-16-16-16-16 filters, 32 hidden) for fast compression tests."""
    from advfine.core.models import default_arch

    arch = default_arch("cnn8", 1, 10, 28, list(mean), list(std))
    arch["conv_channels"] = [8, 8, 16, 16, 16, 16]
    arch["hidden"] = 32
    return arch


@pytest.fixture(scope="module")
def small_parent():
    """An untrained small CNN8 in eval mode, the same weights in every module that asks."""
    from advfine.core.models import build_model

    torch.manual_seed(0)
    return build_model(small_cnn8_arch()).eval()


def random_images(n_test: int = 16, seed: int = 1) -> dict:
    """Two calibration batches of 16 random 28x28 images, ``n_test`` test images and random labels:
    the data of the compression tests."""
    g = torch.Generator().manual_seed(seed)
    return {"calib": [torch.rand(16, 1, 28, 28, generator=g) for _ in range(2)],
            "x": torch.rand(n_test, 1, 28, 28, generator=g),
            "y": torch.randint(0, 10, (n_test,), generator=g)}


def tiny_config(validate: bool = True, **over) -> dict:
    """A complete config for a few-second run: small digits subset, 1 epoch, short attacks. ``over``
    sets dotted keys (``"train.epochs": 3``); the result is validated with the schema's defaults filled
    in, as the workflow does, unless ``validate=False`` (for tests of bad configs)."""
    cfg = {
        "experiment": "tiny",
        "device": "cpu",
        "threads": 1,
        "data": {"name": "digits", "image_size": 28, "test_fraction": 0.25, "split_seed": 0,
                 "data_root": "data", "download": False, "train_subset": 512, "test_subset": 128},
        "model": {"arch": "cnn8"},
        "sweep": {"seeds": [0], "base_models": ["st", "rb"], "prune_sparsities": [0.5], "ptq_bits": [8],
                  "finetune": ["none", "st", "ad"], "dense_finetune": ["ad"]},
        "attack": {"train": {"eps": 0.1, "step_size": 0.05, "steps": 2, "random_start": True},
                   "eval": {"eps": 0.1, "step_size": 0.04, "steps": 3, "random_start": True}},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.1, "momentum": 0.0, "lr_drop_epoch": 1,
                  "lr_after_drop": 0.01},
        "compress": {"calibration_batches": 2, "calibration_batch_size": 32},
        "finetune": {"epochs": 1, "batch_size": 32, "prune": {"lr": 0.1, "momentum": 0.0},
                     "ptq": {"lr": 0.01, "momentum": 0.9}, "dense": {"lr": 0.01, "momentum": 0.0}},
        "evaluate": {"batch_size": 128, "attacks": ["pgd", "apgd_ce", "apgd_t", "transfer", "square"],
                     "apgd": {"steps": 5, "target_classes": 2}, "square": {"queries": 20},
                     "audit": {"more_steps_factor": 1, "more_restarts": 1}, "curve_eps_fractions": [0, 1],
                     # one light step: the escalation's path runs on every quantized node at little cost
                     "escalation": {"steps": [{"attacks": ["apgd_ce", "apgd_t"],
                                               "apgd": {"steps": 5, "target_classes": 2}}]}},
        "report": {"prune_sparsity": 0.5, "ptq_bits": 8},
        "adversarial": {},
    }
    for dotted, value in over.items():
        *heads, last = dotted.split(".")
        node = cfg
        for h in heads:
            node = node[h]
        node[last] = value
    return validate_config(cfg) if validate else cfg


def stage_settings(stage: str, **over) -> dict:
    """What the workflow hands stage ``stage`` for ``tiny_config(**over)``: its slice, on the CPU."""
    return stage_config(tiny_config(**over), stage) | {"device": "cpu"}


def train_settings(**values) -> TrainSchedule:
    """The training schedule of a config's ``train`` section of ``values`` with the schema's defaults."""
    return TrainSchedule.from_config(section_with_defaults("train", values))


@pytest.fixture
def tiny_cfg():
    return tiny_config()


# ---------------------------------------------------------------- the whole workflow on a tiny config
def snakemake(workdir, *args, timeout=900, snakefile=REPO / "Snakefile"):
    """Snakemake on the workflow of ``snakefile``, which runs the package of the same checkout."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "--directory", str(workdir),
           "--cores", "2", *args]
    env = {**os.environ, "PYTHONPATH": src_first(Path(snakefile).parent)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


# The tiny DAG also runs QAT (INT8, from the trained robust model), so every table cell has data,
# Figure 2's t-SNE, and two control arms (FGSM-RS fine-tuning; PGD training from scratch).
# The from-scratch arm's one epoch of 512 images trains no classifier: it is the run's collapsed model.
WITH_QAT = {"figure2": {"enabled": True, "class_index": 8, "n_images": 20, "perplexity": 5},
            "sweep.qat_bits": [8], "sweep.controls": ["fgsm", "scratch"],
            "qat": {"init": "parent", "epochs": 1, "batch_size": 32, "lr": 0.01, "momentum": 0.9,
                             "lr_drop_epoch": None, "lr_after_drop": 0.01},
            "finetune.qat": {"lr": 0.01, "momentum": 0.9},
            # f_rb from random weights in 2 epochs of 512 images: the fixtures' recipe, a clean first epoch
            # and clipping (at the tiny config's lr 0.1 without momentum it ended at a constant classifier)
            **FIXTURE_TRAIN_CONFIG, "train.eps_warmup_epochs": 1, "train.grad_clip_norm": 5.0}


def workflow_config(**over):
    return tiny_config(**(WITH_QAT | over))


def write_config(workdir, cfg):
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))


def planned_outputs(result) -> list[str]:
    """Output paths of the jobs a dry run plans."""
    return re.findall(r"^\s+output: (.+)$", result.stdout, flags=re.M)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("wf")
    write_config(workdir, workflow_config())
    result = snakemake(workdir, "all")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir
