"""Data, models, attacks and the training loop, on tiny real digits."""
import dataclasses
import gzip
import struct

import numpy as np
import pytest
import torch

from advfine.core.attacks.pgd import PGDAttack
from advfine.core.attacks.threat import ThreatModel
from advfine.core.data import DataError
from advfine.core.datasets import load_dataset, load_fashion_mnist_tensors
from advfine.core.evaluate import Suite, clean_accuracy, evaluate_model
from advfine.core.models import build_model, count_parameters, default_arch
from advfine.core.schedule import TrainSchedule
from advfine.core.train import train_model, training_step
from advfine.pipeline.config import section_with_defaults

from conftest import FIXTURE_SEED, FIXTURE_TRAIN_CONFIG, SHARED_FMNIST, tiny_config, train_settings

TRAIN = TrainSchedule.from_config(tiny_config(**FIXTURE_TRAIN_CONFIG, **{"train.epochs": 3})["train"])

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset(tiny_config()["data"])


@pytest.fixture(scope="module")
def trained(digits):
    """A CNN8 standard-trained for 3 epochs on 512 digits (a few seconds)."""
    torch.manual_seed(FIXTURE_SEED)
    model = build_model(default_arch("cnn8", 1, 10, 28, digits.mean, digits.std))
    history = train_model(model, digits.train_x, digits.train_y, TRAIN, None, seed=FIXTURE_SEED, device=CPU)
    return model, history


def test_digits_are_28x28_in_unit_range_with_a_fixed_split(digits):
    assert digits.train_x.shape[1:] == (1, 28, 28) and digits.test_x.shape[1:] == (1, 28, 28)
    assert digits.train_x.min() >= 0 and digits.train_x.max() <= 1
    assert len(digits.train_y) == 512 and len(digits.test_y) == 128
    again = load_dataset(tiny_config()["data"])
    assert torch.equal(again.train_x, digits.train_x) and torch.equal(again.test_y, digits.test_y)
    full = load_dataset(tiny_config(**{"data.train_subset": None, "data.test_subset": None})["data"])
    assert len(full.train_y) + len(full.test_y) == 1797
    assert set(full.test_y.tolist()) == set(range(10))  # stratified


def test_cnn8_matches_the_paper():
    model = build_model(default_arch("cnn8", 1, 10, 28, [0.5], [0.5]))
    assert count_parameters(model) == 549_994
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def _write_idx(path, array: np.ndarray):
    dims = array.shape
    header = struct.pack(">HBB", 0, 0x08, len(dims)) + b"".join(struct.pack(">I", d) for d in dims)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def _write_fake_fashion_mnist(root):
    """Random images and labels in the official .gz files' format (20 train, 10 test)."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("t10k", 10)):
        _write_idx(raw / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    return raw


def test_fashion_mnist_reads_local_gz_files_offline(tmp_path):
    raw = _write_fake_fashion_mnist(tmp_path)
    tx, ty, vx, vy = load_fashion_mnist_tensors(tmp_path, download=False)
    assert tx.shape == (20, 1, 28, 28) and vx.shape == (10, 1, 28, 28)
    assert 0 <= tx.min() and tx.max() <= 1 and ty.dtype == torch.int64


def test_fashion_mnist_missing_files_name_the_path(tmp_path):
    with pytest.raises(DataError, match="FashionMNIST/raw/train-images-idx3-ubyte"):
        load_fashion_mnist_tensors(tmp_path, download=False)


@pytest.mark.skipif(not SHARED_FMNIST.is_dir(), reason="real Fashion-MNIST not present in ../shared")
def test_real_fashion_mnist(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in SHARED_FMNIST.glob("*.gz"):
        (raw / gz.name).symlink_to(gz)
    data = load_dataset(section_with_defaults("data", {"name": "fashion_mnist", "data_root": str(tmp_path)}))
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.test_y).tolist() == [1000] * 10


def test_training_learns_and_is_seeded(digits, trained):
    model, history = trained
    assert history[-1]["loss"] < history[0]["loss"]
    assert clean_accuracy(model, digits.test_x, digits.test_y, 128, CPU) > 0.6
    torch.manual_seed(FIXTURE_SEED)
    twin = build_model(default_arch("cnn8", 1, 10, 28, digits.mean, digits.std))
    twin_history = train_model(twin, digits.train_x, digits.train_y, TRAIN, None, FIXTURE_SEED, CPU)
    assert [h["loss"] for h in twin_history] == [h["loss"] for h in history]


def test_learning_rate_schedule():
    cfg = train_settings(epochs=6, batch_size=32, lr=0.1, momentum=0.0, lr_drop_epoch=4, lr_after_drop=0.01)
    assert [cfg.learning_rate(e) for e in range(6)] == [0.1] * 4 + [0.01] * 2
    assert dataclasses.replace(cfg, lr_drop_epoch=None).learning_rate(10) == 0.1


def test_the_learning_rate_warms_up_linearly_per_step_then_follows_the_schedule():
    cfg = train_settings(epochs=6, batch_size=32, lr=0.1, momentum=0.0, lr_drop_epoch=4, lr_after_drop=0.01,
                         lr_warmup_epochs=2)
    steps = [cfg.learning_rate(e, b, 4) for e in range(3) for b in range(4)]
    assert steps == pytest.approx([0.1 * k / 8 for k in range(1, 9)] + [0.1] * 4)
    assert cfg.learning_rate(4, 0, 4) == 0.01


def test_gradient_clipping_bounds_every_step(digits):
    x, y = digits.train_x[:64], digits.train_y[:64]
    moved = {}
    for clip in (None, 0.01):
        torch.manual_seed(0)
        model = build_model(default_arch("cnn8", 1, 10, 28, [0.5], [0.5]))
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        training_step(model, optimizer, x, y, None, None, grad_clip_norm=clip)
        moved[clip] = (torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm().item()
    assert moved[0.01] == pytest.approx(0.01, rel=1e-3) and moved[None] > 0.1


def test_pgd_stays_in_the_eps_ball_and_the_image_range(digits, trained):
    model, _ = trained
    x, y = digits.test_x[:64], digits.test_y[:64]
    model.train()
    x_adv = PGDAttack(ThreatModel("linf", 0.1), step_size=0.03, steps=5)(model, x, y)
    assert model.training  # mode restored
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not torch.equal(x_adv, x)


def test_skipping_misclassified_samples_does_not_change_robust_accuracy(digits, trained):
    """Robust accuracy counts a sample only if it is right both clean and attacked. Attacking every
    sample at once (as a naive loop would), from the same per-sample random starts, gives exactly
    the same numbers, while the evaluation sends only the correctly classified samples through the
    attack."""
    from dataclasses import replace

    from advfine.core.evaluate import start_noise_for

    model, _ = trained
    attack = PGDAttack(ThreatModel("linf", 0.1), step_size=0.03, steps=5)
    x, y = digits.test_x, digits.test_y
    seen = []
    hook = model.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
    try:
        result = evaluate_model(model, x, y, Suite(pgd=attack, attacks=("pgd",)), 64, CPU, seed=0)
    finally:
        hook.remove()
    with torch.no_grad():
        clean_ok = model(x).argmax(1) == y
    noise = start_noise_for(x, torch.Generator().manual_seed(0))  # evaluate_model's draw for seed 0
    x_adv = replace(attack, stop_on_success=True)(model, x, y, start_noise=noise)
    with torch.no_grad():
        naive_ok = clean_ok & (model(x_adv).argmax(1) == y)
    assert result["clean_acc"] == clean_ok.float().mean().item()
    assert result["robust_acc"] == naive_ok.float().mean().item()
    assert 0 < naive_ok.sum() < clean_ok.sum() < len(y)  # the attack works; some samples are wrong
    # prediction: len(x) samples; attack: at most steps + 1 passes over the correct ones only
    attacked = sum(seen) - len(x)
    assert attacked <= clean_ok.sum().item() * (attack.steps + 1)


def test_a_samples_random_start_does_not_depend_on_its_batch(digits, trained):
    """Two batch sizes, same per-sample random starts: the same per-sample outcome."""
    model, _ = trained
    attack = PGDAttack(ThreatModel("linf", 0.1), step_size=0.03, steps=5)
    suite = Suite(pgd=attack, attacks=("pgd", "apgd_ce"), apgd_steps=5)
    results = [evaluate_model(model, digits.test_x, digits.test_y, suite, batch, CPU, seed=4)
               for batch in (16, 128)]
    assert results[0]["robust_acc"] == results[1]["robust_acc"]
    assert torch.equal(results[0]["per_sample"]["broken_by"], results[1]["per_sample"]["broken_by"])


def test_eps_warmup_starts_clean_and_reaches_full_eps():
    from advfine.core.train import attack_for_epoch

    attack = PGDAttack(ThreatModel("linf", 0.1), step_size=0.03, steps=5)
    cfg = train_settings(epochs=4, batch_size=8, lr=0.1, momentum=0.0, lr_drop_epoch=None, lr_after_drop=0.01,
                         eps_warmup_epochs=2)
    assert attack_for_epoch(attack, 0, cfg) is None
    assert attack_for_epoch(attack, 1, cfg).threat.eps == pytest.approx(0.05)
    assert attack_for_epoch(attack, 2, cfg) == attack
    assert attack_for_epoch(attack, 0, dataclasses.replace(cfg, eps_warmup_epochs=0)) == attack


def test_stopping_at_the_first_fooling_iterate_is_at_least_as_strong(digits, trained):
    model, _ = trained
    x, y = digits.test_x[:128], digits.test_y[:128]
    runs = {}
    for stop in (False, True):
        attack = PGDAttack(ThreatModel("linf", 0.1), step_size=0.025, steps=10, stop_on_success=stop)
        x_adv = attack(model, x, y, generator=torch.Generator().manual_seed(3))
        assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
        with torch.no_grad():
            runs[stop] = (model(x_adv).argmax(1) == y, x_adv)
    robust_stop, robust_last = runs[True][0], runs[False][0]
    # Both runs share the random start; a sample fooled at any iterate counts as fooled, so the
    # early-stopping attack finds at least as many (batch composition changes float rounding, so
    # individual paths may differ slightly: compare counts).
    assert robust_stop.sum() <= robust_last.sum()
    assert robust_stop.sum() < len(y)  # and it does attack


def test_paper_faithful_eps_is_half_in_pixels_and_unclamped(digits, trained):
    """The reference code adds eps after normalizing with std 0.5 and never clamps: its eps 0.2 moves
    pixels by at most 0.1 and may leave [0, 1]. The pixel default keeps the full eps and the range."""
    model, _ = trained
    x, y = digits.test_x[:64], digits.test_y[:64]
    config = {"eps_space": "paper_faithful", "norm": "linf",
              "eval": {"eps": 0.2, "step_size": 0.05, "steps": 5, "random_start": True}}
    faithful = PGDAttack.from_config(config, "eval")
    x_adv = faithful(model, x, y, generator=torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert (x_adv - x).abs().max() > 0.09
    assert x_adv.min() < 0  # digits have black background pixels at 0: unclamped moves go below
    info = faithful.describe()
    assert info["eps_space"] == "paper_faithful" and info["eps_pixel"] == pytest.approx(0.1)
    assert not info["clamped_to_valid_range"]
    pixel = PGDAttack(ThreatModel("linf", 0.2), step_size=0.05, steps=5)
    assert pixel.describe()["eps_space"] == "pixel" and pixel.describe()["eps_pixel"] == 0.2


def test_fashion_mnist_damaged_files_are_named(tmp_path):
    raw = _write_fake_fashion_mnist(tmp_path)
    gz = raw / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:200])  # a truncated download
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: .*official file"):
        load_fashion_mnist_tensors(tmp_path, download=False)
    assert not (raw / "t10k-images-idx3-ubyte").exists()  # nothing half-unpacked left behind
    _write_idx(gz, np.random.default_rng(1).integers(0, 256, (10, 28, 28)))
    unpacked = raw / "train-labels-idx1-ubyte"
    load_fashion_mnist_tensors(tmp_path, download=False)
    unpacked.write_bytes(unpacked.read_bytes()[:12])  # an unpacked file cut short
    with pytest.raises(DataError, match="FashionMNIST/raw"):
        load_fashion_mnist_tensors(tmp_path, download=False)
