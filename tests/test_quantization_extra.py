"""Tests of quantization-aware training (compress.prepare_qat, NNI's QATQuantizer) and the 1-bit
scheme (advfine.binary), with their checkpoints, training, attacks and costs."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advfine import binary, checkpoints, compress
from advfine.attacks.pgd import PGDAttack
from advfine.datasets import load_dataset, load_digits_tensors
from advfine.evaluate import Suite, clean_accuracy, evaluate_model
from advfine.models import build_model, default_arch
from advfine.train import train_model
from advfine.cost import model_cost, weight_storage_bytes

from conftest import small_cnn8_arch, train_settings
from conftest import tiny_config

CPU = torch.device("cpu")


small_arch = small_cnn8_arch


@pytest.fixture(scope="module")
def parent(small_parent):
    return small_parent


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    return {"calib": [torch.rand(16, 1, 28, 28, generator=g) for _ in range(2)],
            "x": torch.rand(32, 1, 28, 28, generator=g),
            "y": torch.randint(0, 10, (32,), generator=g)}


@pytest.fixture(scope="module")
def int1(parent, data):
    return {"ptq": compress.quantize_ptq(parent, 1, data["calib"]),
            "qat": compress.prepare_qat(parent, 1, data["calib"])}


def max_diff(a, b):
    return (a - b).abs().max().item()


def ranges(qmodel) -> dict:
    """Every range tensor of a quantized model ({(layer, target, key): tensor}), from quant_state."""
    out = {}
    for layer, targets in compress.quant_state(qmodel)["calibration"].items():
        for target, entry in targets.items():
            if torch.is_tensor(entry):  # binary: {layer: {"input_scale": tensor or None}}
                out[(layer, target)] = entry
            elif isinstance(entry, dict):
                out |= {(layer, target, k): v for k, v in entry.items() if torch.is_tensor(v)}
    return out


def changed_ranges(before: dict, after: dict) -> list:
    return [k for k in before if not torch.equal(before[k], after[k])]


def settings(**over):
    return train_settings(**({"epochs": 1, "batch_size": 16, "lr": 0.05, "momentum": 0.0, "lr_drop_epoch": None,
                              "lr_after_drop": 0.01} | over))


# ------------------------------------------------------------------------------------------- INT1

def test_int1_weights_are_sign_times_channel_mean_abs(int1):
    for q in int1.values():
        layers = binary.binary_layers(q)
        assert len(layers) == 8  # every Conv2d/Linear, first and last included
        for name, layer in layers.items():
            assert isinstance(layer, (nn.Conv2d, nn.Linear))  # cost hooks and weight counts still see it
            w = layer.weight.detach()
            wb = layer.binary_weight().detach()
            for channel in range(w.shape[0]):
                alpha = w[channel].abs().mean()
                values = wb[channel].unique()
                assert len(values) == 2, (name, channel)
                assert torch.equal(values, torch.stack([-alpha, alpha])), (name, channel)
                assert torch.equal(wb[channel] > 0, w[channel] >= 0)


def test_int1_activations_two_levels_after_first_layer(int1, data):
    for q in int1.values():
        seen = {}

        def capture(layer, args, name):
            seen[name] = (args[0], layer.quantize_input(args[0]))

        layers = binary.binary_layers(q)
        handles = [layer.register_forward_pre_hook(lambda m, a, n=name: capture(m, a, n))
                   for name, layer in layers.items()]
        with torch.no_grad():
            q(data["x"])
        for h in handles:
            h.remove()
        first = "features.0"
        assert layers[first].input_scale is None and torch.equal(seen[first][1], seen[first][0])  # image stays float
        for name, (_, quantized) in seen.items():
            if name == first:
                continue
            s = layers[name].input_scale
            assert s.ndim == 0 and s > 0
            assert torch.equal(quantized.unique(), torch.stack([torch.zeros(()), s])), name


def test_two_level_scale_is_lloyd_max():
    x = torch.tensor([0.0, 0.0, 0.1, 0.9, 1.0, 1.1])
    s = binary.two_level_scale(x)
    assert s.item() == pytest.approx(1.0)  # the mean of the values >= s/2
    assert binary.two_level_scale(torch.zeros(10)) > 0  # never a zero level


def test_int1_input_gradients_and_deepcopy(int1, data):
    for q in int1.values():
        x = data["x"].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(q(x), data["y"]), x)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        twin = copy.deepcopy(q)
        with torch.no_grad():
            assert max_diff(twin(data["x"]), q(data["x"])) == 0
            twin.fc2.weight.mul_(-1)
            assert max_diff(twin(data["x"]), q(data["x"])) > 0


def test_int1_costs(parent, int1):
    for q in int1.values():
        assert model_cost(q, (1, 28, 28)) == model_cost(parent, (1, 28, 28))
        for bits in (None, 8, 1):
            assert weight_storage_bytes(q, bits) == weight_storage_bytes(parent, bits)
    layers = [m for m in parent.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    packed_weights = sum(-(-m.weight.numel() // 8) for m in layers)  # 1 bit each, whole bytes per tensor
    assert weight_storage_bytes(int1["ptq"], 1) == packed_weights + 4 * sum(m.bias.numel() for m in layers)


def test_binary_scheme_learns_on_a_shallow_net():
    # A BN-free binary net loses signal layer after layer (see the report of INT1 on CNN8), so check
    # the straight-through gradients on a 2-layer MLP on 8x8 digits: they must learn.
    tx, ty, vx, vy = load_digits_tensors(8, 0.25, 0)
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 10))
    for layer in (mlp[1], mlp[3]):
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    q = compress.prepare_qat(mlp, 1, [tx[:128]])
    # XNOR-Net's gradient is scaled by alpha = mean |w| (~0.05 here): a large lr
    train_model(q, tx, ty, settings(epochs=5, batch_size=32, lr=0.5), None, 0, CPU)
    assert clean_accuracy(q, vx, vy, 256, CPU) > 0.5


# -------------------------------------------------------------------------------------------- QAT

def test_prepare_qat_leaves_input_untouched_and_validates(parent, data, int1):
    state = {k: v.clone() for k, v in parent.state_dict().items()}
    q = compress.prepare_qat(parent, 8, data["calib"])
    assert all(torch.equal(v, parent.state_dict()[k]) for k, v in state.items())
    assert not any(hasattr(m, "_nni_wrapper") for m in parent.modules()) and not binary.binary_layers(parent)
    assert hasattr(q.features[0], "_nni_wrapper") and not any(m.training for m in q.modules())
    for bad in (0, 3, 32, 8.0, True, "8"):
        with pytest.raises(ValueError, match="bits"):
            compress.prepare_qat(parent, bad, data["calib"])
    with pytest.raises(ValueError, match="calibration"):
        compress.prepare_qat(parent, 8, [])
    for quantized in (q, int1["ptq"]):
        for make in (compress.prepare_qat, compress.quantize_ptq):
            with pytest.raises(ValueError, match="already quantized"):
                make(quantized, 8, data["calib"])


@pytest.mark.parametrize("bits", [8, 4, 1])
def test_qat_ranges_track_in_training_and_freeze_in_eval(parent, data, bits):
    q = compress.prepare_qat(parent, bits, data["calib"])
    assert compress.quant_state(q)["mode"] == "qat"
    before = ranges(q)
    with torch.no_grad():
        q(3 * data["x"])  # eval mode: nothing moves, even far outside the calibration range
    assert changed_ranges(before, ranges(q)) == []
    train_model(q, data["x"], data["y"], settings(), None, 0, CPU)
    after = ranges(q)
    moved = changed_ranges(before, after)
    if bits == 1:  # every activation level tracks (weight scales need no state)
        assert len(moved) == len(before) == 7
    else:  # NNI: weights and activations of every layer
        assert {k[2] for k in moved} >= {"scale", "tracked_min", "tracked_max"}
        assert {k[1] for k in moved} == {"weight", "_input_0", "_output_0"}
        assert {k[0] for k in moved} == {k[0] for k in before}
    with torch.no_grad():
        q.eval()(3 * data["x"])
    assert changed_ranges(after, ranges(q)) == []


def test_ptq_int1_levels_stay_fixed_in_training(int1, data):
    q = copy.deepcopy(int1["ptq"])
    assert compress.quant_state(q)["mode"] == "ptq"
    before = ranges(q)
    train_model(q, data["x"], data["y"], settings(), None, 0, CPU)
    assert changed_ranges(before, ranges(q)) == []


def test_qat_gradients_survive_clamped_outputs(parent, data):
    # NNI's QATClampRound zeroes clamped gradients in place; on sum()'s expanded gradient one clamped
    # output zeroed every gradient of the model (compress._QATClampRound fixes that)
    q = compress.prepare_qat(parent, 8, data["calib"])
    out = q(10 * data["x"])  # far outside the calibrated output range: some outputs clamp
    out.sum().backward()
    assert q.features[0]._nni_wrapper.weight.grad.abs().sum() > 0


def test_qat_deepcopy_tracks_independently(parent, data):
    q = compress.prepare_qat(parent, 8, data["calib"])
    F.cross_entropy(q.train()(data["x"]), data["y"]).backward()  # autograd history left behind
    twin = copy.deepcopy(q.eval())  # the QATQuantizer behind the tracking hooks is copied along
    before = ranges(q)
    with torch.no_grad():
        assert max_diff(twin(data["x"]), q(data["x"])) == 0
        twin.train()(3 * data["x"])
    assert changed_ranges(before, ranges(twin)) and not changed_ranges(before, ranges(q))


@pytest.mark.parametrize("make, bits", [(compress.prepare_qat, 8), (compress.prepare_qat, 4),
                                        (compress.prepare_qat, 1), (compress.quantize_ptq, 1),
                                        (compress.quantize_ptq, 8)])
def test_checkpoint_roundtrip(parent, data, tmp_path, make, bits):
    q = make(parent, bits, data["calib"])
    train_model(q, data["x"], data["y"], settings(), None, 0, CPU)  # moves weights (and QAT ranges)
    state, quant = compress.float_state_dict(q), compress.quant_state(q)
    assert state.keys() == build_model(small_arch()).state_dict().keys()
    mode = "qat" if make is compress.prepare_qat else "ptq"
    assert quant["mode"] == mode and quant["bits"] == bits
    path = tmp_path / "q.pt"
    checkpoints.save_checkpoint(path, state, small_arch(), quant)
    restored, ckpt = checkpoints.load_model(path)  # torch.load(weights_only=True) inside
    direct = compress.restore_quantized(small_arch(), state, quant)
    x = data["x"]
    with torch.no_grad():
        for model in (restored, direct):
            assert max_diff(model(x), q(x)) == 0
        assert max_diff(restored(x), parent(x)) > 1e-3  # still quantized
    assert compress.quant_state(restored)["mode"] == mode
    assert changed_ranges(ranges(q), ranges(restored)) == []


def test_checkpoint_without_mode_loads_as_ptq(parent, data):
    q = compress.quantize_ptq(parent, 8, data["calib"])
    old = compress.quant_state(q)
    del old["mode"]  # checkpoints written before QAT existed
    restored = compress.restore_quantized(small_arch(), compress.float_state_dict(q), old)
    assert compress.quant_state(restored)["mode"] == "ptq"
    with torch.no_grad():
        assert max_diff(restored(data["x"]), q(data["x"])) == 0
    with pytest.raises(ValueError, match="mode"):
        compress.restore_quantized(small_arch(), compress.float_state_dict(q), {**old, "mode": "lsq"})


@pytest.mark.parametrize("bits", [8, 1])
def test_finetuning_a_restored_qat_model(parent, data, tmp_path, bits):
    q = compress.prepare_qat(parent, bits, data["calib"])
    checkpoints.save_checkpoint(tmp_path / "q.pt", compress.float_state_dict(q), small_arch(), compress.quant_state(q))
    model, _ = checkpoints.load_model(tmp_path / "q.pt")
    weights, before = compress.float_state_dict(model), ranges(model)
    attack = PGDAttack(eps=0.1, step_size=0.05, steps=2)
    history = train_model(model, data["x"], data["y"], settings(), attack, 0, CPU)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    after = compress.float_state_dict(model)
    assert any(not torch.equal(weights[k], after[k]) for k in weights)
    assert changed_ranges(before, ranges(model))  # still QAT: ranges keep tracking
    again = compress.restore_quantized(small_arch(), after, compress.quant_state(model))
    with torch.no_grad():
        assert max_diff(again(data["x"]), model(data["x"])) == 0


def test_the_suite_attacks_qat_and_int1_models_and_keeps_their_clean_accuracy(parent, data, int1):
    models = [compress.prepare_qat(parent, 4, data["calib"]), int1["ptq"], int1["qat"]]
    suite = Suite(pgd=PGDAttack(0.1, 0.05, 3), attacks=("pgd", "apgd_ce", "square"), apgd_steps=3, square_queries=10)
    for q in models:
        result = evaluate_model(q, data["x"], data["y"], suite, 16, CPU, seed=0)
        assert result["clean_acc"] == clean_accuracy(q, data["x"], data["y"], 16, CPU)
        assert result["attack_order"] == ["pgd", "apgd_ce", "square"]


# -------------------------------------------------------------------------------- tiny QAT on digits

@pytest.fixture(scope="module")
def digits():
    return load_dataset(tiny_config()["data"])


@pytest.mark.parametrize("bits", [8, 4])
def test_tiny_qat_learns(digits, bits):
    arch = small_arch(digits.mean, digits.std)
    arch["conv_channels"], arch["hidden"] = [16] * 6, 32
    torch.manual_seed(0)
    q = compress.prepare_qat(build_model(arch), bits, [digits.train_x[:64]])  # from scratch
    history = train_model(q, digits.train_x, digits.train_y, settings(epochs=3, batch_size=32), None, 0, CPU)
    assert history[-1]["train_acc"] > history[0]["train_acc"]
    assert clean_accuracy(q, digits.test_x, digits.test_y, 128, CPU) > 0.4  # chance: 0.1


def test_adversarial_qat_runs(digits):
    arch = small_arch(digits.mean, digits.std)
    torch.manual_seed(0)
    q = compress.prepare_qat(build_model(arch), 8, [digits.train_x[:64]])
    before = ranges(q)
    attack = PGDAttack(eps=0.1, step_size=0.05, steps=2)
    history = train_model(q, digits.train_x[:128], digits.train_y[:128], settings(batch_size=32), attack, 0, CPU)
    assert history[0]["eps"] == 0.1 and torch.isfinite(torch.tensor(history[0]["loss"]))
    assert changed_ranges(before, ranges(q))
