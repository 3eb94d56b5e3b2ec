"""Tests of advfine.core.quantize: the one fake-quant scheme of PTQ and QAT (BatchNorm folded, per-channel
symmetric weights, per-tensor affine activations, fused kernels, clipped STE), its checkpoints, and
its behaviour in training (no divergence, no empty_cache on the hot path)."""
import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from advfine.core import quantize
from advfine.core.attacks.pgd import PGDAttack
from advfine.core.attacks.threat import ThreatModel
from advfine.core.cost import model_cost, weight_storage_bytes
from advfine.core.models import build_model, default_arch
from advfine.core.train import train_model
from advfine.pipeline.checkpoints import load_model, save_model

from conftest import small_cnn8_arch, train_settings, random_images

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return random_images()


@pytest.fixture(scope="module")
def quantized(small_parent, data):
    return {bits: quantize.quantize_ptq(small_parent, bits, data["calib"]) for bits in (16, 8, 4, 2)}


def small_resnet18_arch() -> dict:
    """A ResNet-18 (all 18 layers, BatchNorm, residuals) at 1/8 width, for speed."""
    arch = default_arch("resnet18", 3, 10, 32, [0.5] * 3, [0.5] * 3)
    arch["stage_channels"] = [8, 16, 32, 64]
    arch["block_channels"] = [[c, c] for c in arch["stage_channels"]]
    return arch


def resnet_with_statistics(seed: int = 0) -> torch.nn.Module:
    """A small ResNet-18 whose BatchNorm layers hold non-trivial statistics (a few train-mode forwards)."""
    torch.manual_seed(seed)
    model = build_model(small_resnet18_arch())
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.rand(32, 3, 32, 32))
    return model.eval()


def max_diff(a, b):
    return (a - b).abs().max().item()


# ------------------------------------------------------------------------------------- the scheme

def test_ptq_error_grows_as_bits_shrink(small_parent, quantized, data):
    with torch.no_grad():
        ref = small_parent(data["x"])
        err = {b: ((q(data["x"]) - ref).norm() / ref.norm()).item() for b, q in quantized.items()}
    assert err[16] < 1e-3 and 0 < err[8] < 0.1, err
    assert err[2] > err[4] > err[8] > err[16], err


def test_ptq_leaves_its_input_untouched_and_validates(small_parent, data):
    state = {k: v.clone() for k, v in small_parent.state_dict().items()}
    q = quantize.quantize_ptq(small_parent, 4, data["calib"])
    assert all(torch.equal(v, state[k]) for k, v in small_parent.state_dict().items())
    assert not quantize.is_quantized(small_parent) and quantize.is_quantized(q)
    assert not q.training
    for bad in (0, 3, 32, 8.0, True, "8"):
        with pytest.raises(ValueError, match="bits"):
            quantize.quantize_ptq(small_parent, bad, data["calib"])
    with pytest.raises(ValueError, match="calibration"):
        quantize.quantize_ptq(small_parent, 8, [])
    with pytest.raises(ValueError, match="already quantized"):
        quantize.quantize_ptq(q, 8, data["calib"])


def test_batchnorm_is_folded_and_the_folded_model_is_the_same_function():
    model = resnet_with_statistics()
    x = torch.rand(8, 3, 32, 32)
    folded = quantize.fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        assert max_diff(folded(x), model(x)) < 1e-4
    q = quantize.quantize_ptq(model, 8, [torch.rand(16, 3, 32, 32)])
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in q.modules())
    twin = quantize.float_twin(q)
    assert not quantize.is_quantized(twin)
    with torch.no_grad():
        assert max_diff(twin(x), model(x)) < 1e-4  # the transfer source is the float network


def test_weights_per_channel_symmetric_from_the_current_weights(quantized):
    q = quantized[4]
    conv = q.get_submodule("features.2")
    wq = conv.weight_fake_quant
    max_abs = conv.weight.detach().abs().flatten(1).amax(1)
    assert torch.allclose(wq.scale, max_abs / 7, rtol=1e-6)  # INT4: integers in [-7, 7]
    assert torch.all(wq.zero_point == 0)
    rounded = wq(conv.weight.detach())
    steps = rounded / wq.scale.view(-1, 1, 1, 1)
    assert torch.allclose(steps, steps.round(), atol=1e-4) and steps.abs().max() <= 7 + 1e-4


@pytest.mark.parametrize("bits", [16, 8, 4, 2])
def test_fused_kernels_equal_the_reference_rounding_and_nnis_quantizer(bits):
    """Where the scheme is unchanged (per-tensor affine activations, symmetric weights at a given scale),
    torch's fused kernels give NNI's ClampRound values, up to rare ties one step apart."""
    from nni.compression.base.apply_method import ClampRound

    g = torch.Generator().manual_seed(bits)
    x = torch.randn(4096, generator=g) * 3
    qmin, qmax = (0, 2**bits - 1)
    scale, zero_point = torch.tensor(6.0 / (qmax - qmin)), torch.tensor(float((qmax - qmin) // 2))
    ours = torch.fake_quantize_per_tensor_affine(x, scale.item(), int(zero_point), qmin, qmax)
    reference = (torch.clamp(torch.round(x / scale + zero_point), qmin, qmax) - zero_point) * scale
    nni = ClampRound.apply(x, SimpleNamespace(_scaler=None, scale=scale, zero_point=zero_point, qmin=qmin, qmax=qmax))
    for other in (reference, nni):
        differ = (ours - other).abs() > 1e-6 * scale
        assert differ.float().mean() <= 0.005
        assert ((ours - other).abs()[differ] <= scale * 1.001).all()  # never more than one step


def test_the_clipped_straight_through_estimator(quantized, data):
    first = quantized[8].get_submodule("activation_post_process_0")
    x = torch.linspace(-3, 3, 101, requires_grad=True)
    first(x).sum().backward()
    lo = (first.clamp_min - first.zero_point) * first.scale
    hi = (first.clamp_max - first.zero_point) * first.scale
    inside = (x.detach() >= lo) & (x.detach() <= hi)
    assert inside.any() and (~inside).any()
    assert torch.equal(x.grad, inside.float())  # 1 inside the range, 0 where clamped


def test_input_gradients_flow_and_are_finite(quantized, data):
    for bits, q in quantized.items():
        x = data["x"].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(q(x), data["y"]), x)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, bits


def test_ptq_activation_ranges_stay_fixed_and_weight_ranges_follow_the_weights(quantized, data):
    q = copy.deepcopy(quantized[8])
    activations = {n: m.scale.clone() for n, m in quantize.fake_quantizers(q).items() if "weight" not in n}
    q.train()
    opt = torch.optim.SGD(q.parameters(), lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(q(10 * data["x"]), data["y"]).backward()  # far outside the calibration range
        opt.step()
    q(data["x"])
    for name, scale in activations.items():
        assert torch.equal(q.get_submodule(name).scale, scale), name
    conv = q.get_submodule("features.0")
    assert torch.allclose(conv.weight_fake_quant.scale, conv.weight.detach().abs().flatten(1).amax(1) / 127)


def test_qat_ranges_track_in_training_and_freeze_in_eval(small_parent, data):
    q = quantize.prepare_qat(small_parent, 8, data["calib"])
    name = "activation_post_process_1"
    before = q.get_submodule(name).scale.clone()
    with torch.no_grad():
        q.eval()(5 * data["x"])  # eval (attacks): ranges frozen
        assert torch.equal(q.get_submodule(name).scale, before)
        q.train()(5 * data["x"])
        assert not torch.equal(q.get_submodule(name).scale, before)


def test_no_empty_cache_on_the_hot_path(small_parent, data, monkeypatch):
    """NNI 3.0 called torch.cuda.empty_cache() after every wrapped layer's forward (a device sync)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(1))
    attack = PGDAttack(ThreatModel("linf", 0.1), step_size=0.05, steps=2, random_start=True)
    for make in (quantize.quantize_ptq, quantize.prepare_qat):
        q = make(small_parent, 4, data["calib"])
        train_model(q, data["x"], data["y"], train_settings(epochs=1, batch_size=8, lr=0.01, momentum=0.9,
                    lr_drop_epoch=None, lr_after_drop=0.01), attack, 0, CPU)
    assert calls == []


# -------------------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("make, bits", [(quantize.quantize_ptq, 8), (quantize.quantize_ptq, 4),
                                        (quantize.prepare_qat, 8), (quantize.prepare_qat, 2)])
def test_checkpoint_roundtrip_also_after_finetuning(small_parent, data, tmp_path, make, bits):
    q = make(small_parent, bits, data["calib"])
    x, y = data["x"], data["y"]
    opt = torch.optim.SGD(q.parameters(), lr=0.2)
    q.train()
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(q(x), y).backward()
        opt.step()
    q.eval()
    save_model(tmp_path / "q.pt", q, small_cnn8_arch())
    restored, ckpt = load_model(tmp_path / "q.pt")
    assert ckpt["quant"]["bits"] == bits and ckpt["quant"]["scheme"] == quantize.SCHEME
    with torch.no_grad():
        assert torch.equal(restored(x), q(x))
        assert max_diff(restored(x), quantize.float_twin(q)(x)) > 0  # still quantized
    for model in (q, restored):  # the restored model trains on exactly like the original
        model.train()
        model.zero_grad()
        opt = torch.optim.SGD(model.parameters(), lr=0.2)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        model.eval()
    with torch.no_grad():
        assert max_diff(restored(x), q(x)) < 1e-5


def test_a_pruned_resnet_quantizes_and_restores(tmp_path):
    model = resnet_with_statistics()
    arch = small_resnet18_arch()
    q = quantize.quantize_ptq(model, 4, [torch.rand(16, 3, 32, 32)])
    save_model(tmp_path / "r.pt", q, arch)
    restored, _ = load_model(tmp_path / "r.pt")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(restored(x), q(x))


def test_checkpoints_of_the_old_nni_scheme_are_refused_with_a_clear_error(small_parent):
    old = {"mode": "ptq", "bits": 8, "calibration": {"fc2": {}}}
    with pytest.raises(ValueError, match="re-run its compress/qat job"):
        quantize.restore_quantized(small_cnn8_arch(), small_parent.state_dict(), old)
    with pytest.raises(ValueError, match="quant mode"):
        quantize.restore_quantized(small_cnn8_arch(), {}, {"mode": "lsq", "bits": 8})


def test_the_first_layers_input_can_stay_in_float(small_parent, data, tmp_path):
    """quantize_first_input=False: the first layer runs in float (the image is never rounded), every
    later layer is quantized, and a checkpoint restores it that way."""
    for make in (quantize.quantize_ptq, quantize.prepare_qat):
        plain = make(small_parent, 4, data["calib"], quantize_first_input=False)
        default = make(small_parent, 4, data["calib"])
        assert not hasattr(plain.get_submodule("features.0"), "weight_fake_quant")
        assert hasattr(plain.get_submodule("features.2"), "weight_fake_quant")
        assert hasattr(default.get_submodule("features.0"), "weight_fake_quant")
        x = data["x"].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(plain(x).sum(), x)
        assert torch.isfinite(grad).all()
        save_model(tmp_path / "q.pt", plain, small_cnn8_arch())
        restored, _ = load_model(tmp_path / "q.pt")
        with torch.no_grad():
            assert torch.equal(restored(data["x"]), plain(data["x"]))
        assert not hasattr(restored.get_submodule("features.0"), "weight_fake_quant")


# ------------------------------------------------------------------------------------------- costs

def test_costs_of_quantized_models(small_parent, quantized):
    full = model_cost(small_parent, (1, 28, 28))
    assert model_cost(quantized[8], (1, 28, 28)) == full
    assert not quantized[8].training  # model_cost restores the mode
    for bits in (None, 8, 2):  # a fake-quant model stores the same float weights
        assert weight_storage_bytes(quantized[8], bits) == weight_storage_bytes(small_parent, bits)


def test_weight_storage_bytes():
    model = build_model(default_arch("cnn8", 1, 10, 28, [0.5], [0.5]))
    biases = 32 + 32 + 64 + 64 + 128 + 128 + 128 + 10
    weights = 549_994 - biases
    assert weight_storage_bytes(model, None) == weight_storage_bytes(model, 32) == 549_994 * 4
    assert weight_storage_bytes(model, 8) == weights + biases * 4
    assert weight_storage_bytes(model, 2) == weights // 4 + biases * 4
    with pytest.raises(ValueError):
        weight_storage_bytes(model, 0)


# --------------------------------------------------------------------- the ResNet-18 divergence bug

@pytest.mark.parametrize("bits", [8, 4])
def test_adversarial_finetuning_of_a_ptq_resnet18_trains_to_finite_improving_loss(bits):
    """Regression test: with NNI's PTQ (BatchNorm unfolded, in train mode while fine-tuning,
    unclipped STE), adversarial fine-tuning of a quantized CIFAR ResNet-18 gave NaN after one step.
    With BatchNorm folded and a clipped STE it trains: finite weights, the training loss goes down."""
    model = resnet_with_statistics()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    q = quantize.quantize_ptq(model, bits, list(x.split(32)))
    attack = PGDAttack(ThreatModel("linf", 8 / 255), step_size=2 / 255, steps=3, random_start=True)
    history = train_model(q, x, y, train_settings(epochs=6, batch_size=16, lr=0.01, momentum=0.9,
                          lr_drop_epoch=None, lr_after_drop=0.01), attack, 0, CPU)
    losses = [h["loss"] for h in history]
    assert all(torch.isfinite(p).all() for p in q.parameters())
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("bits", [16, 8, 4, 2])
def test_the_cpu_fake_quantizer_equals_torchs_fused_kernel(bits):
    """FakeQuantizePerTensorCPU replaces torch's slow CPU kernel: same values and the same clipped-STE
    gradient (up to rare ties, one step apart)."""
    g = torch.Generator().manual_seed(bits)
    x = (torch.randn(64, 8, 7, 7, generator=g) * 2).requires_grad_(True)
    qmin, qmax = 0, 2**bits - 1
    scale, zero_point = 5.0 / (qmax - qmin), (qmax - qmin) // 3
    fused = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)
    ours = quantize.FakeQuantizePerTensorCPU.apply(x, scale, zero_point, qmin, qmax)
    differ = (fused - ours).abs() > 1e-6 * scale
    assert differ.float().mean() <= 0.005 and ((fused - ours).abs() <= scale * 1.001).all()
    (g_fused,) = torch.autograd.grad(fused.sum(), x)
    (g_ours,) = torch.autograd.grad(ours.sum(), x)
    assert ((g_fused != g_ours) & ~differ).sum() == 0
    assert 0 < g_ours.mean() < 1  # some values clamped, some not


def test_a_checkpoint_of_the_old_scheme_names_its_file(small_parent, tmp_path):
    from advfine.pipeline.checkpoints import save_checkpoint

    path = tmp_path / "old.pt"
    save_checkpoint(path, small_parent.state_dict(), small_cnn8_arch(), {"mode": "ptq", "bits": 8, "calibration": {}})
    with pytest.raises(ValueError, match="old.pt.*re-run its compress/qat job"):
        load_model(path)
