"""The stage functions end to end on tiny digits: train -> compress -> fine-tune -> evaluate."""
import hashlib
import json
from pathlib import Path

import pytest
import torch

from advfine import artifacts, stages
from advfine.config import stage_config

from conftest import tiny_config


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "digits.pt"
    info = stages.run_prepare_data(stage_config(tiny_config(), "prepare_data"), path)
    assert info["n_train"] == 512 and info["n_test"] == 128 and info["shape"] == [1, 28, 28]
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory, data_path):
    """A standard base model trained by the stage function (3 epochs on 512 digits)."""
    d = tmp_path_factory.mktemp("base")
    cfg = stage_config(tiny_config(**{"train.epochs": 3}), "train_base") | {"device": "cpu"}
    stages.run_train_base(cfg, data_path, "st", 0, d / "model.pt", d / "metrics.json")
    return d


def compress(data_path, base, out, compression, **over):
    cfg = stage_config(tiny_config(**over), "compress") | {"device": "cpu"}
    return stages.run_compress(cfg, data_path, compression, 0, base / "model.pt", base / "metrics.json",
                               out / f"{compression}.pt", out / f"{compression}.json")


def finetune(data_path, out, compression, mode, **over):
    cfg = stage_config(tiny_config(**over), "finetune") | {"device": "cpu"}
    return stages.run_finetune(cfg, data_path, compression, mode, 0, out / f"{compression}.pt",
                               out / f"{compression}.json", out / "ft.pt", out / "ft.json")


def evaluate(data_path, model, metrics, compression="dense", finetune="none", **over):
    cfg = stage_config(tiny_config(**over), "evaluate") | {"device": "cpu"}
    out = Path(model).parent / f"eval-{compression}-{finetune}.json"
    return stages.run_evaluate(cfg, data_path, "tiny", "st", compression, finetune, 0, model, metrics, out)


def test_train_base_writes_checkpoint_and_metrics(base):
    metrics = json.loads((base / "metrics.json").read_text())
    assert metrics["stage"] == "train_base" and len(metrics["history"]) == 3
    assert metrics["stages"][0]["stage"] == "train_base" and metrics["stages"][0]["wall_time_s"] > 0
    prov = metrics["provenance"]
    assert prov["device"] == "cpu" and prov["seed"] == 0 and len(prov["config_hash"]) == 16
    assert prov["versions"]["torch"] and prov["versions"]["nni"] == "3.0"
    model, ckpt = artifacts.load_model(base / "model.pt")
    assert ckpt["arch"]["conv_channels"] == [32, 32, 64, 64, 128, 128]


def test_ptq_int8_without_finetuning_keeps_the_parent_accuracy(data_path, base, tmp_path):
    before = sha(base / "model.pt")
    compress(data_path, base, tmp_path, "ptq-int8")
    assert sha(base / "model.pt") == before  # compression never touches its parent
    dense = evaluate(data_path, base / "model.pt", base / "metrics.json", **{"attack.eval.steps": 0})
    quant = evaluate(data_path, tmp_path / "ptq-int8.pt", tmp_path / "ptq-int8.json", "ptq-int8",
                     **{"attack.eval.steps": 0})
    assert dense["clean_acc"] > 0.7
    assert abs(quant["clean_acc"] - dense["clean_acc"]) <= 0.01
    assert quant["weight_bytes"] < dense["weight_bytes"] / 3
    assert quant["robust_acc"] <= quant["robust_acc_whitebox"] <= quant["clean_acc"]
    assert [s["stage"] for s in quant["stages"]] == ["train_base", "compress"]


def test_pruning_removes_filters_and_finetuning_starts_from_the_pruned_weights(data_path, base, tmp_path):
    m = compress(data_path, base, tmp_path, "prune-0.5")
    assert m["arch"]["conv_channels"] == [16, 16, 32, 32, 64, 64]
    assert m["params"] < m["parent_params"] / 2
    pruned = evaluate(data_path, tmp_path / "prune-0.5.pt", tmp_path / "prune-0.5.json", "prune-0.5",
                      **{"attack.eval.steps": 0})
    # A near-zero learning rate: if fine-tuning started from fresh weights, accuracy would be ~10 %.
    finetune(data_path, tmp_path, "prune-0.5", "st", **{"finetune.prune.lr": 1e-6})
    tuned = evaluate(data_path, tmp_path / "ft.pt", tmp_path / "ft.json", "prune-0.5", "st",
                     **{"attack.eval.steps": 0})
    assert abs(tuned["clean_acc"] - pruned["clean_acc"]) <= 0.02
    assert tuned["params"] == pruned["params"]
    assert [s["stage"] for s in tuned["stages"]] == ["train_base", "compress", "finetune"]


def test_adversarial_finetuning_of_a_quantized_model_saves_and_reloads(data_path, base, tmp_path):
    compress(data_path, base, tmp_path, "ptq-int4")
    m = finetune(data_path, tmp_path, "ptq-int4", "ad")
    assert m["attack"]["eps"] == 0.1 and m["history"][-1]["eps"] == 0.1
    model, ckpt = artifacts.load_model(tmp_path / "ft.pt")
    assert ckpt["quant"]["bits"] == 4
    with torch.no_grad():
        assert torch.isfinite(model(torch.rand(2, 1, 28, 28))).all()


def test_int1_is_refused_clearly(data_path, base, tmp_path):
    with pytest.raises(ValueError, match="INT1"):
        compress(data_path, base, tmp_path, "ptq-int1")
    assert list(tmp_path.iterdir()) == []


def test_compression_labels_round_trip():
    for label in ("dense", "prune-0.5", "prune-0.85", "ptq-int8", "ptq-int16"):
        assert stages.compression_label(*stages.parse_compression(label)) == label
    with pytest.raises(ValueError, match="unknown compression"):
        stages.parse_compression("ptq-8")
