"""Tests of the CIFAR-10 + ResNet-18 path: the CIFAR-10 loader (on generated files in the official
format: CIFAR-10 cannot be downloaded here), batch augmentation, the CIFAR ResNet-18, loading pretrained
weights, and structured pruning of ResNet-18 with NNI dependency groups."""
import copy
import dataclasses
import json
import pickle

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from advfine.core.data import DataError, augment_batch
from advfine.core.datasets import load_dataset
from advfine.core.models import arch_of, build_model, count_parameters, default_arch, load_pretrained
from advfine.core.prune import prune_filters_l1
from advfine.core.train import train_model
from advfine.pipeline import checkpoints
from advfine.pipeline.config import section_with_defaults

from conftest import train_settings

CIFAR_FILES = {f"data_batch_{i}": 3 for i in range(1, 6)} | {"test_batch": 4}  # file -> number of images


def write_fake_cifar(root) -> dict:
    """A tiny ``cifar-10-batches-py`` folder in the official format (pickled dicts with bytes keys,
    b'data' uint8 N x 3072 channel-major, b'labels' a list). Returns {file: (data, labels)}."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name, n in CIFAR_FILES.items():
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [f"{i}.png".encode() for i in range(n)]}, f, protocol=2)
        written[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072}, f, protocol=2)
    return written


def cifar_cfg(root, **over) -> dict:
    """A complete data section (the schema's defaults filled in) of CIFAR-10 under ``root``."""
    return section_with_defaults("data", {"name": "cifar10", "data_root": str(root), "download": False,
                                          "split_seed": 0, "train_subset": None, "test_subset": None} | over)


# ------------------------------------------------------------------------------------------ data

def test_cifar10_loads_generated_batches(tmp_path):
    written = write_fake_cifar(tmp_path)
    data = load_dataset(cifar_cfg(tmp_path))
    assert data.name == "cifar10" and data.num_classes == 10
    assert data.train_x.shape == (15, 3, 32, 32) and data.test_x.shape == (4, 3, 32, 32)
    assert data.train_x.dtype == data.test_x.dtype == torch.float32
    assert data.train_y.dtype == data.test_y.dtype == torch.int64
    assert 0.0 <= data.train_x.min() and data.train_x.max() <= 1.0
    assert data.in_channels == 3 and data.input_size == 32 and data.mean == data.std == [0.5] * 3
    train_labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert data.train_y.tolist() == train_labels and data.test_y.tolist() == written["test_batch"][1]
    # channel-major rows: the first 1024 bytes are the red plane
    first = torch.from_numpy(written["data_batch_1"][0][0].reshape(3, 32, 32)).float() / 255
    assert torch.equal(data.train_x[0], first)
    subset = load_dataset(cifar_cfg(tmp_path, train_subset=5, test_subset=2))
    assert len(subset.train_y) == 5 and len(subset.test_y) == 2


def test_cifar10_missing_folder_names_it(tmp_path):
    with pytest.raises(DataError, match=r"cifar-10-batches-py.*data\.download: true"):
        load_dataset(cifar_cfg(tmp_path))


def test_cifar10_missing_or_bad_batch_is_named(tmp_path):
    write_fake_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset(cifar_cfg(tmp_path))
    (folder / "data_batch_3").write_bytes((folder / "data_batch_2").read_bytes()[:100])  # truncated
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset(cifar_cfg(tmp_path))


class RunsCode:
    def __reduce__(self):
        return (print, ("this must not run",))


def test_cifar10_batch_cannot_run_code(tmp_path, capsys):
    write_fake_cifar(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [RunsCode()]}, f, protocol=2)
    with pytest.raises(DataError, match=r"test_batch.*refusing to load .*print"):
        load_dataset(cifar_cfg(tmp_path))
    assert "must not run" not in capsys.readouterr().out


# ---------------------------------------------------------------------------------- augmentation

def test_augment_batch_is_a_padded_crop_maybe_flipped():
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0)) + 1.0  # nonzero, unlike padding
    out = augment_batch(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    again = augment_batch(x, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    assert not torch.equal(out, augment_batch(x, torch.Generator().manual_seed(2)))
    padded = nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(len(x)):  # each output is one of the 9 x 9 crops of the padded image, or its mirror
        candidates = [c for top in range(9) for left in range(9)
                      for c in (padded[i, :, top:top + 8, left:left + 8],
                                padded[i, :, top:top + 8, left:left + 8].flip(-1))]
        assert any(torch.equal(out[i], c) for c in candidates)


def test_train_model_augment_is_deterministic_and_off_by_default():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
    arch = default_arch("cnn8", 3, 10, 32, [0.5] * 3, [0.5] * 3)
    arch["conv_channels"], arch["hidden"] = [4] * 6, 8
    cfg = train_settings(epochs=1, batch_size=8, lr=0.1, momentum=0.0, lr_drop_epoch=None, lr_after_drop=0.01)

    def trained(**over):
        torch.manual_seed(0)
        model = build_model(arch)
        train_model(model, x, y, dataclasses.replace(cfg, **over), None, seed=3, device=torch.device("cpu"))
        return model.state_dict()

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    plain = trained()
    assert same(plain, trained(augment=False))
    augmented = trained(augment=True)
    assert same(augmented, trained(augment=True)) and not same(plain, augmented)


# -------------------------------------------------------------------------------------- ResNet-18

def resnet_arch(num_classes=10):
    return default_arch("resnet18", 3, num_classes, 32, [0.5] * 3, [0.5] * 3)


def randomize_batchnorm(model: nn.Module, seed: int) -> None:
    """Non-trivial BN statistics and affine parameters, so that a BN channel left behind by a pruned
    conv would show in the outputs (with fresh BN, a zeroed channel stays zero)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def test_resnet18_size_and_forward():
    model = build_model(resnet_arch()).eval()
    assert count_parameters(model) == 11_173_962
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert count_parameters(build_model(resnet_arch(100))) == 11_173_962 + 90 * 513


def test_resnet18_arch_of_checks_residual_widths():
    model = build_model(resnet_arch())
    assert arch_of(model, resnet_arch()) == resnet_arch()
    model.layer2[1].conv2 = nn.Conv2d(128, 100, 3, padding=1, bias=False)
    with pytest.raises(ValueError, match="residual widths"):
        arch_of(model, resnet_arch())


def torchvision_cifar_resnet18() -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem (as timm's and the paper's pretrained model)."""
    tv = torchvision.models.resnet18(num_classes=10)
    tv.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    tv.maxpool = nn.Identity()
    return tv


def test_load_pretrained_foreign_and_own_checkpoints(tmp_path):
    torch.manual_seed(0)
    tv = torchvision_cifar_resnet18()
    randomize_batchnorm(tv, 1)
    tv.eval()
    path = tmp_path / "foreign.pt"
    torch.save({"epoch": 300, "state_dict": {f"module.{k}": v for k, v in tv.state_dict().items()}}, path)
    model = load_pretrained(build_model(resnet_arch()), path).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), tv((x - 0.5) / 0.5), atol=1e-5)  # our model normalizes itself
    assert torch.equal(model.normalize.mean.flatten(), torch.full((3,), 0.5))

    own = tmp_path / "own.pt"
    checkpoints.save_checkpoint(own, model.state_dict(), resnet_arch())
    again = load_pretrained(build_model(resnet_arch()), own).eval()
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_load_pretrained_mismatch_names_file_and_keys(tmp_path):
    path = tmp_path / "cifar100.pt"
    torch.save(build_model(resnet_arch(100)).state_dict(), path)
    with pytest.raises(ValueError, match=r"cifar100\.pt.*fc\.weight: file \(100, 512\) vs model \(10, 512\)"):
        load_pretrained(build_model(resnet_arch()), path)
    cnn = tmp_path / "cnn8.pt"
    torch.save(build_model(default_arch("cnn8", 3, 10, 32, [0.5] * 3, [0.5] * 3)).state_dict(), cnn)
    with pytest.raises(ValueError, match=r"cnn8\.pt.*missing keys: bn1\.bias.*unexpected keys: fc1\.bias"):
        load_pretrained(build_model(resnet_arch()), cnn)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_pretrained(build_model(resnet_arch()), tmp_path / "nope.pt")


# --------------------------------------------------------------------------------------- pruning

SPARSITY = 0.5


@pytest.fixture(scope="module")
def resnet_parent():
    torch.manual_seed(0)
    model = build_model(resnet_arch())
    randomize_batchnorm(model, 2)
    return model.eval()


@pytest.fixture(scope="module")
def resnet_pruned(resnet_parent):
    model, arch = prune_filters_l1(resnet_parent, resnet_arch(), SPARSITY, torch.rand(2, 3, 32, 32))
    return model, arch


def test_resnet18_pruning_halves_every_channel_group(resnet_parent, resnet_pruned):
    model, arch = resnet_pruned
    # With dependency groups, residual channels lose the same filters: every width is halved.
    # FACTS.md: 2,797,610 parameters, the count torch-pruning gives too.
    assert arch["stage_channels"] == [32, 64, 128, 256]
    assert arch["block_channels"] == [[32, 32], [64, 64], [128, 128], [256, 256]]
    assert count_parameters(model) == 2_797_610
    assert not any(m.training for m in model.modules())
    bns = {n: m.num_features for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    convs = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert all(bns[n.replace("conv", "bn").replace("downsample.0", "downsample.1")] == c for n, c in convs.items())
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert model(x).shape == resnet_parent(x).shape == (3, 10)


def test_resnet18_pruned_equals_parent_with_filters_zeroed(resnet_parent, resnet_pruned):
    """The pruned model computes what the parent computes with the removed filters' BatchNorm scale and
    shift set to zero (so those channels are exactly 0, as if absent)."""
    model, arch = resnet_pruned
    reference = copy.deepcopy(resnet_parent)
    pruned_modules = dict(model.named_modules())
    for name, bn in reference.named_modules():
        if isinstance(bn, nn.BatchNorm2d):
            # randomize_batchnorm made every running_var distinct: the kept channels are those still there
            kept = torch.isin(bn.running_var, pruned_modules[name].running_var)
            assert kept.sum() == pruned_modules[name].num_features, name
            with torch.no_grad():
                bn.weight[~kept] = 0
                bn.bias[~kept] = 0
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected, got = reference(x), model(x)
        assert (expected - got).abs().max() < 1e-5
        assert (expected - resnet_parent(x)).abs().max() > 1e-3  # pruning changed something

    # the JSON arch dict rebuilds it exactly
    rebuilt = build_model(json.loads(json.dumps(arch)))
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), got)


# ------------------------------------------------------------------ the stages on CIFAR-format data

@pytest.mark.slow
def test_the_cifar10_resnet18_path_trains_prunes_quantizes_and_evaluates(tmp_path):
    """prepare -> adversarial training -> 50 % pruning / PTQ INT8 / QAT INT8 -> adversarial fine-tuning
    -> evaluation, through the stage functions the workflow runs, on generated CIFAR-format files."""
    from advfine.stages import compress, deployment, evaluate, finetune, prepare_data, qat, train_base

    from conftest import stage_settings

    write_fake_cifar(tmp_path)
    eps = {"attack.eps_space": "pixel", "attack.train.eps": 8 / 255, "attack.eval.eps": 8 / 255}
    over = {"data": cifar_cfg(tmp_path), "model.arch": "resnet18", "train.epochs": 1, "train.lr_drop_epoch": None,
            "train.batch_size": 8,
            "train.augment": True, "attack.eval.steps": 2, "compress.calibration_batches": 1,
            "compress.calibration_batch_size": 8, "sweep.qat_bits": [8],
            "qat": {"init": "parent", "epochs": 1, "batch_size": 8, "lr": 0.01, "momentum": 0.9,
                    "lr_drop_epoch": None, "lr_after_drop": 0.01},
            "finetune.batch_size": 8, "finetune.qat": {"lr": 0.01, "momentum": 0.9},
            "deployment": {"batch_size": 8, "warmup": 0, "rounds": 1}, **eps}

    def slice_(stage):
        return stage_settings(stage, **over)

    data = tmp_path / "cifar10.pt"
    info = prepare_data.run(slice_("prepare_data"), out_data=data)
    assert info["shape"] == [3, 32, 32] and info["n_train"] == 15 and info["n_test"] == 4
    base = tmp_path / "base-rb"
    parent = {"model": base / "model.pt", "metrics": base / "metrics.json"}
    m = train_base.run(slice_("train_base"), data=data, train="rb", seed=0, out_model=parent["model"],
                       out_metrics=parent["metrics"])
    assert m.details["params"] == 11_173_962 and m.stages[0].adversarial
    evaluated = []
    for label in ("prune-0.5", "ptq-int8", "qat-int8"):
        node = base / label
        made = {"out_model": node / "model.pt", "out_metrics": node / "metrics.json"}
        if label == "qat-int8":
            qat.run(slice_("qat"), data=data, bits=8, train="rb", seed=0, **parent, **made)
        else:
            compress.run(slice_("compress"), data=data, compression=label, seed=0, **parent, **made)
        ft = node / "ft-ad"
        finetune.run(slice_("finetune"), data=data, compression=label, mode="ad", seed=0, model=node / "model.pt",
                     metrics=node / "metrics.json", out_model=ft / "model.pt", out_metrics=ft / "metrics.json")
        record = evaluate.run(slice_("evaluate"), data=data, experiment="tiny", train="rb", compression=label,
                              finetune="ad", seed=0, model=ft / "model.pt", metrics=ft / "metrics.json",
                              out_eval=ft / "eval.json", out_samples=ft / "samples.csv")
        assert record.dataset == "cifar10" and record.arch == "resnet18"
        if record.diverged:  # known: PTQ fine-tuning of this ResNet diverges; said, not scored
            assert label == "ptq-int8" and record.clean_acc is None and record.robust_acc is None
        else:
            assert 0 <= record.robust_acc <= record.clean_acc <= 1
        assert record.n_test == 4
        assert [s.stage for s in record.stages] == ["train_base", "compress", "finetune"]
        evaluated.append((ft / "eval.json", ft / "model.pt"))
        if label == "ptq-int8":  # the residual network exports to a real integer model too
            model, _ = checkpoints.load_model(ft / "model.pt")
            if all(torch.isfinite(p).all() for p in model.parameters()):
                assert 0 <= record.int8["clean_acc"] <= 1
            else:  # known: fake-quant fine-tuning of this 15-image ResNet can diverge; said, not hidden
                assert record.int8 is None and "diverged" in record.int8_skipped
        else:
            assert record.int8 is None
        if label == "prune-0.5":
            assert record.params == 2_797_610
        else:
            assert record.weight_bytes < 11_173_962 * 4 / 3  # 8-bit weights
    # one deployment job times the three: the residual network's real integer model too, where it did not diverge
    timed = deployment.run(slice_("deployment"), data=data, evals=[e for e, _ in evaluated],
                           models=[m for _, m in evaluated], out_json=tmp_path / "deployment.json",
                           out_csv=tmp_path / "deployment.csv")
    assert all(node["models"]["model"]["latency_ms"] > 0 and node["models"]["model"]["batch_size"] == 8
               for node in timed)
    assert ("int8" in timed[1]["models"]) != timed[1]["diverged"]
