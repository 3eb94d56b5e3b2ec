"""bf16 mixed precision and the GPU-facing helpers, on the CPU: the same code paths a GPU takes
(autocast, pinned copies, cuDNN flags), checked here through their CPU behaviour."""
import json

import pytest
import torch

from advfine.core import runtime
from advfine.core.attacks.pgd import PGDAttack
from advfine.core.attacks.threat import ThreatModel
from advfine.core.datasets import load_dataset
from advfine.core.evaluate import Suite, evaluate_model
from advfine.core.models import build_model, default_arch
from advfine.core.schedule import TrainSchedule
from advfine.core.train import train_model

from conftest import FIXTURE_SEED, FIXTURE_TRAIN_CONFIG, stage_settings, tiny_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset(tiny_config()["data"])


def test_autocast_runs_forward_passes_in_bf16_only_when_asked():
    model = build_model(default_arch("cnn8", 1, 10, 28, [0.5], [0.5])).eval()
    x = torch.rand(4, 1, 28, 28)
    with runtime.autocast(CPU, "fp32"):
        assert model(x).dtype == torch.float32
    with runtime.autocast(CPU, "bf16"):
        assert model(x).dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32  # weights stay fp32
    with pytest.raises(ValueError, match="precision"):
        runtime.autocast(CPU, "fp16")


def test_pgd_under_bf16_keeps_an_fp32_perturbation_in_the_ball():
    model = build_model(default_arch("cnn8", 1, 10, 28, [0.5], [0.5])).eval()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    with runtime.autocast(CPU, "bf16"):
        attack = PGDAttack(ThreatModel("linf", 0.1), step_size=0.03, steps=3)
        x_adv = attack(model, x, y, generator=torch.Generator().manual_seed(0))
    assert x_adv.dtype == torch.float32
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert not torch.equal(x_adv, x)


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(FIXTURE_SEED)
    model = build_model(default_arch("cnn8", 1, 10, 28, digits.mean, digits.std))
    settings = TrainSchedule.from_config(tiny_config(**FIXTURE_TRAIN_CONFIG, **{"train.epochs": 3})["train"])
    train_model(model, digits.train_x, digits.train_y, settings, None, FIXTURE_SEED, CPU)
    return model


def test_bf16_evaluation_matches_fp32(digits, trained):
    """The same model evaluated in bf16 and fp32 (same random starts): clean and PGD accuracy agree
    to within a few of the 128 test images."""
    attack = PGDAttack(ThreatModel("linf", 0.1), step_size=0.04, steps=5)
    suite = Suite(pgd=attack, attacks=("pgd",))
    fp32, bf16 = (evaluate_model(trained, digits.test_x, digits.test_y, suite, 64, CPU, 0, precision=p)
                  for p in ("fp32", "bf16"))
    assert fp32["precision"] == "fp32" and bf16["precision"] == "bf16"
    assert fp32["clean_acc"] > 0.6
    assert abs(fp32["clean_acc"] - bf16["clean_acc"]) <= 2 / 128
    assert abs(fp32["robust_acc"] - bf16["robust_acc"]) <= 4 / 128
    assert bf16["robust_acc"] <= bf16["clean_acc"]


def test_bf16_adversarial_training_learns(digits):
    """Adversarial training in bf16 (attack and SGD step under autocast) lowers the loss; the weights
    stay fp32. (On a CPU without bf16 units this is slow: 256 images only.)"""
    torch.manual_seed(0)
    model = build_model(default_arch("cnn8", 1, 10, 28, digits.mean, digits.std))
    cfg = TrainSchedule.from_config(tiny_config(**{"train.epochs": 3, "train.eps_warmup_epochs": 1})["train"])
    history = train_model(model, digits.train_x[:256], digits.train_y[:256], cfg,
                          PGDAttack(ThreatModel("linf", 0.1), step_size=0.05, steps=1), 0, CPU, precision="bf16")
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_copies_to_the_cpu_are_not_pinned_and_cost_nothing():
    x = torch.rand(3, 2)
    assert runtime.to_device(x, CPU) is x  # the CPU fallback: no pinned staging copy


def test_cudnn_autotuning_only_without_determinism_and_with_stable_shapes_and_tf32_starts_off():
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, runtime.tf32_enabled()
    try:
        runtime.set_tf32(True)
        runtime.configure_backends(CPU, deterministic=True)
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
        assert not runtime.tf32_enabled()  # a job computes in full fp32 until its precision says tf32
        runtime.configure_backends(CPU, deterministic=False)
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
        runtime.configure_backends(CPU, deterministic=False, stable_shapes=False)  # attacks: shrinking batches
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
        runtime.set_tf32(saved[2])


def test_tf32_follows_the_precision_and_fake_quant_models_never_get_it():
    from advfine.stages.common import precision_for

    saved = runtime.tf32_enabled()
    try:
        cfg = {"precision": "tf32"}
        assert precision_for(cfg, CPU, fake_quantized=False) == "tf32"
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert precision_for(cfg, CPU, fake_quantized=True) == "fp32"  # TF32 cannot hold an INT16 grid
        assert not runtime.tf32_enabled()
        assert precision_for({"precision": "fp32"}, CPU, fake_quantized=False) == "fp32"
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        runtime.set_tf32(saved)
    with runtime.autocast(CPU, "tf32"):  # tf32 is a backend flag, not an autocast dtype
        assert build_model(default_arch("cnn8", 1, 10, 28, [0.5], [0.5]))(torch.rand(2, 1, 28, 28)).dtype == torch.float32


def test_stages_record_precision_and_keep_fake_quant_models_in_fp32(tmp_path):
    from advfine.stages import compress, evaluate, finetune, prepare_data, train_base

    over = {"train.epochs": 1, "train.lr_drop_epoch": None, "precision": "bf16"}
    data = tmp_path / "digits.pt"
    prepare_data.run(stage_settings("prepare_data", **over), out_data=data)
    base = train_base.run(stage_settings("train_base", **over), data=data, train="st", seed=0,
                          out_model=tmp_path / "m.pt", out_metrics=tmp_path / "m.json")
    assert base.details["precision"] == "bf16"
    # compress runs on the CPU whatever the config's device (its rule asks for no GPU), and says so
    compress.run(stage_settings("compress", **over) | {"device": "cuda:0"}, data=data, compression="ptq-int8", seed=0,
                 model=tmp_path / "m.pt", metrics=tmp_path / "m.json", out_model=tmp_path / "q.pt",
                 out_metrics=tmp_path / "q.json")
    ft = finetune.run(stage_settings("finetune", **over), data=data, compression="ptq-int8", mode="st", seed=0,
                      model=tmp_path / "q.pt", metrics=tmp_path / "q.json", out_model=tmp_path / "ft.pt",
                      out_metrics=tmp_path / "ft.json")
    assert ft.details["precision"] == "fp32"  # bf16 cannot hold the INT8 grid of a fake-quant model
    ev = evaluate.run(stage_settings("evaluate", **over), data=data, experiment="tiny", train="st",
                      compression="dense", finetune="none", seed=0, model=tmp_path / "m.pt",
                      metrics=tmp_path / "m.json", out_eval=tmp_path / "e.json", out_samples=tmp_path / "s.csv")
    assert ev.precision == "bf16"
    for record in (base, ft, ev):  # TF32 off, recorded; no CUDA memory on a CPU run
        assert record.provenance["tf32"] is False and record.peak_gpu_mb is None
    q = json.loads((tmp_path / "q.json").read_text())
    assert q["provenance"]["device"] == "cpu" and q["stages"][-1]["device"] == "cpu"
    assert "peak_gpu_mb" not in q and all("peak_gpu_mb" not in st for st in q["stages"])


def test_precision_reaches_the_stages_that_compute_in_it():
    from advfine.pipeline.config import stage_config

    for stage in ("train_base", "finetune", "evaluate"):
        assert stage_config(tiny_config(), stage)["precision"] == "fp32"  # the schema's default
        assert stage_config(tiny_config(precision="bf16"), stage)["precision"] == "bf16"


def test_square_l2_runs_under_bf16_autocast():
    """torchattacks' Square writes the model's logits into float32 tensors by index: under bf16
    autocast the logits must reach it as float32 (otherwise: 'Index put requires the source and
    destination dtypes match')."""
    from advfine.core.attacks.square import square_l2

    torch.manual_seed(0)
    model = build_model(default_arch("cnn8", 1, 10, 28, [0.5], [0.5])).eval()
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)  # every sample correctly classified: Square has something to fool
    threat = ThreatModel("l2", 1.0)
    with runtime.autocast(CPU, "bf16"):
        x_adv = square_l2(model, x, y, threat, n_queries=20, seed=0)
    assert x_adv.dtype == torch.float32 and threat.contains(x_adv, x).all()
