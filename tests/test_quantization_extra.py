"""Tests of quantization-aware training (quantize.prepare_qat) and the 1-bit
scheme (advfine.core.binary), with their checkpoints, training, attacks and costs."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advfine.core import binary, quantize

from advfine.core.attacks.pgd import PGDAttack
from advfine.core.attacks.threat import ThreatModel
from advfine.core.cost import model_cost, weight_storage_bytes
from advfine.core.datasets import load_dataset, load_digits_tensors
from advfine.core.evaluate import Suite, clean_accuracy, evaluate_model
from advfine.core.models import build_model, default_arch
from advfine.core.train import train_model
from advfine.pipeline import checkpoints

from conftest import FIXTURE_SEED, small_cnn8_arch, train_settings, random_images
from conftest import tiny_config

CPU = torch.device("cpu")


small_arch = small_cnn8_arch


@pytest.fixture(scope="module")
def parent(small_parent):
    return small_parent


@pytest.fixture(scope="module")
def data():
    return random_images(32)


@pytest.fixture(scope="module")
def int1(parent, data):
    return {"ptq": quantize.quantize_ptq(parent, 1, data["calib"]),
            "qat": quantize.prepare_qat(parent, 1, data["calib"])}


def max_diff(a, b):
    return (a - b).abs().max().item()


def ranges(qmodel) -> dict:
    """Every activation range of a quantized model: binary levels, or fake-quant scales and zero points
    (weight ranges follow the weights by design)."""
    layers = binary.binary_layers(qmodel)
    if layers:
        return {(name,): layer.input_scale.clone() for name, layer in layers.items() if layer.input_scale is not None}
    return {(name, key): getattr(m, key).clone() for name, m in quantize.fake_quantizers(qmodel).items()
            if "weight" not in name for key in ("scale", "zero_point")}


def parameters(model) -> dict:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def changed_ranges(before: dict, after: dict) -> list:
    return [k for k in before if not torch.equal(before[k], after[k])]


def settings(**over):
    return train_settings(**({"epochs": 1, "batch_size": 16, "lr": 0.05, "momentum": 0.0, "lr_drop_epoch": None,
                              "lr_after_drop": 0.01} | over))


# ------------------------------------------------------------------------------------------- INT1

def test_int1_weights_are_sign_times_channel_mean_abs(int1):
    for q in int1.values():
        layers = binary.binary_layers(q)
        assert sorted(layers) == sorted(["features.2", "features.4", "features.6", "features.8", "features.10",
                                         "fc1"])  # XNOR-Net: the first and last layers stay in full precision
        assert type(q.features[0]) is nn.Conv2d and type(q.fc2) is nn.Linear
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


def test_int1_inputs_of_binary_layers_take_two_levels(int1, data):
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
        assert set(seen) == set(layers)
        for name, (_, quantized) in seen.items():
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
        assert weight_storage_bytes(q, None) == weight_storage_bytes(parent, None)
    layers = [m for m in parent.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    binary_layers, float_layers = layers[1:-1], [layers[0], layers[-1]]
    packed_weights = sum(-(-m.weight.numel() // 8) for m in binary_layers)  # 1 bit each, whole bytes per tensor
    float_weights = 4 * sum(m.weight.numel() for m in float_layers)
    assert weight_storage_bytes(int1["ptq"], 1) == packed_weights + float_weights + 4 * sum(
        m.bias.numel() for m in layers)


def test_binary_scheme_learns_on_a_shallow_net():
    # The straight-through gradients of a binary hidden layer (first and last layers float) must learn:
    # a 3-layer MLP on 8x8 digits. One run in six stalls (seeds 0-5: 82-98 % but once 35 %), so three seeds
    # train and the median counts.
    tx, ty, vx, vy = load_digits_tensors(8, 0.25, 0)
    accuracies = []
    for seed in range(FIXTURE_SEED, FIXTURE_SEED + 3):
        torch.manual_seed(seed)
        mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                            nn.Linear(256, 10))
        for layer in (mlp[1], mlp[3], mlp[5]):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        q = quantize.prepare_qat(mlp, 1, [tx[:128]])
        # XNOR-Net's gradient is scaled by alpha = mean |w| (~0.05 here): a large lr
        train_model(q, tx, ty, settings(epochs=5, batch_size=32, lr=0.5), None, seed, CPU)
        accuracies.append(clean_accuracy(q, vx, vy, 256, CPU))
    assert sorted(accuracies)[1] > 0.5, accuracies


# -------------------------------------------------------------------------------------------- QAT

def test_prepare_qat_leaves_input_untouched_and_validates(parent, data, int1):
    state = {k: v.clone() for k, v in parent.state_dict().items()}
    q = quantize.prepare_qat(parent, 8, data["calib"])
    assert all(torch.equal(v, parent.state_dict()[k]) for k, v in state.items())
    assert not quantize.is_quantized(parent) and quantize.is_quantized(q)
    assert not any(m.training for m in q.modules())
    for bad in (0, 3, 32, 8.0, True, "8"):
        with pytest.raises(ValueError, match="bits"):
            quantize.prepare_qat(parent, bad, data["calib"])
    with pytest.raises(ValueError, match="calibration"):
        quantize.prepare_qat(parent, 8, [])
    for quantized in (q, int1["ptq"]):
        for make in (quantize.prepare_qat, quantize.quantize_ptq):
            with pytest.raises(ValueError, match="already quantized"):
                make(quantized, 8, data["calib"])


@pytest.mark.parametrize("bits", [8, 4, 1])
def test_qat_ranges_track_in_training_and_freeze_in_eval(parent, data, bits):
    q = quantize.prepare_qat(parent, bits, data["calib"])
    assert quantize.quant_state(q)["mode"] == "qat"
    before = ranges(q)
    with torch.no_grad():
        q(3 * data["x"])  # eval mode: nothing moves, even far outside the calibration range
    assert changed_ranges(before, ranges(q)) == []
    train_model(q, data["x"], data["y"], settings(), None, 0, CPU)
    after = ranges(q)
    moved = changed_ranges(before, after)
    if bits == 1:  # every activation level tracks (weight scales need no state)
        assert len(moved) == len(before) == 6
    else:  # every activation's scale
        assert {k[0] for k in moved if k[1] == "scale"} == {k[0] for k in before}
    with torch.no_grad():
        q.eval()(3 * data["x"])
    assert changed_ranges(after, ranges(q)) == []


def test_ptq_int1_levels_stay_fixed_in_training(int1, data):
    q = copy.deepcopy(int1["ptq"])
    assert quantize.quant_state(q)["mode"] == "ptq"
    before = ranges(q)
    train_model(q, data["x"], data["y"], settings(), None, 0, CPU)
    assert changed_ranges(before, ranges(q)) == []


def test_qat_gradients_survive_clamped_outputs(parent, data):
    # NNI's QATClampRound zeroed clamped gradients in place; on sum()'s expanded gradient one clamped
    # output zeroed every gradient of the model. torch's fused kernel returns a new gradient.
    q = quantize.prepare_qat(parent, 8, data["calib"])
    out = q(10 * data["x"])  # far outside the calibrated output range: some outputs clamp
    out.sum().backward()
    assert q.get_submodule("features.0").weight.grad.abs().sum() > 0


def test_qat_deepcopy_tracks_independently(parent, data):
    q = quantize.prepare_qat(parent, 8, data["calib"])
    F.cross_entropy(q.train()(data["x"]), data["y"]).backward()  # autograd history left behind
    twin = copy.deepcopy(q.eval())  # the QATQuantizer behind the tracking hooks is copied along
    before = ranges(q)
    with torch.no_grad():
        assert max_diff(twin(data["x"]), q(data["x"])) == 0
        twin.train()(3 * data["x"])
    assert changed_ranges(before, ranges(twin)) and not changed_ranges(before, ranges(q))


@pytest.mark.parametrize("make, bits", [(quantize.prepare_qat, 8), (quantize.prepare_qat, 4),
                                        (quantize.prepare_qat, 1), (quantize.quantize_ptq, 1),
                                        (quantize.quantize_ptq, 8)])
def test_checkpoint_roundtrip(parent, data, tmp_path, make, bits):
    q = make(parent, bits, data["calib"])
    train_model(q, data["x"], data["y"], settings(), None, 0, CPU)  # moves weights (and QAT ranges)
    state, quant = q.state_dict(), quantize.quant_state(q)
    mode = "qat" if make is quantize.prepare_qat else "ptq"
    assert quant["mode"] == mode and quant["bits"] == bits
    path = tmp_path / "q.pt"
    checkpoints.save_checkpoint(path, state, small_arch(), quant)
    restored, ckpt = checkpoints.load_model(path)  # torch.load(weights_only=True) inside
    direct = quantize.restore_quantized(small_arch(), state, quant)
    x = data["x"]
    with torch.no_grad():
        for model in (restored, direct):
            assert max_diff(model(x), q(x)) == 0
        assert max_diff(restored(x), parent(x)) > 1e-3  # still quantized
    assert quantize.quant_state(restored)["mode"] == mode
    assert changed_ranges(ranges(q), ranges(restored)) == []


@pytest.mark.parametrize("bits", [8, 1])
def test_finetuning_a_restored_qat_model(parent, data, tmp_path, bits):
    q = quantize.prepare_qat(parent, bits, data["calib"])
    checkpoints.save_model(tmp_path / "q.pt", q, small_arch())
    model, _ = checkpoints.load_model(tmp_path / "q.pt")
    weights, before = parameters(model), ranges(model)
    attack = PGDAttack(ThreatModel("linf", 0.1), step_size=0.05, steps=2)
    history = train_model(model, data["x"], data["y"], settings(), attack, 0, CPU)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    after = parameters(model)
    assert any(not torch.equal(weights[k], after[k]) for k in weights)
    assert changed_ranges(before, ranges(model))  # still QAT: ranges keep tracking
    model.eval()  # train mode would track the ranges once more
    again = quantize.restore_quantized(small_arch(), model.state_dict(), quantize.quant_state(model))
    again.to(memory_format=torch.channels_last)  # as train_model placed the model: the same float sums
    with torch.no_grad():
        assert max_diff(again(data["x"]), model(data["x"])) == 0


def test_the_suite_attacks_qat_and_int1_models_and_keeps_their_clean_accuracy(parent, data, int1):
    models = [quantize.prepare_qat(parent, 4, data["calib"]), int1["ptq"], int1["qat"]]
    suite = Suite(pgd=PGDAttack(ThreatModel("linf", 0.1), 0.05, 3), attacks=("pgd", "apgd_ce", "square"), apgd_steps=3,
                  square_queries=10)
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
    q = quantize.prepare_qat(build_model(arch), bits, [digits.train_x[:64]])  # from scratch
    history = train_model(q, digits.train_x, digits.train_y, settings(epochs=3, batch_size=32), None, 0, CPU)
    assert history[-1]["train_acc"] > history[0]["train_acc"]
    assert clean_accuracy(q, digits.test_x, digits.test_y, 128, CPU) > 0.4  # chance: 0.1


def test_adversarial_qat_runs(digits):
    arch = small_arch(digits.mean, digits.std)
    torch.manual_seed(0)
    q = quantize.prepare_qat(build_model(arch), 8, [digits.train_x[:64]])
    before = ranges(q)
    attack = PGDAttack(ThreatModel("linf", 0.1), step_size=0.05, steps=2)
    history = train_model(q, digits.train_x[:128], digits.train_y[:128], settings(batch_size=32), attack, 0, CPU)
    assert history[0]["eps"] == 0.1 and torch.isfinite(torch.tensor(history[0]["loss"]))
    assert changed_ranges(before, ranges(q))
