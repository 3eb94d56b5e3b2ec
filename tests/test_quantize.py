"""Tests of advfine.core.quantize: the one fake-quant scheme of PTQ and QAT (BatchNorm folded, per-channel
symmetric weights, per-tensor affine activations, fused kernels, clipped STE), its checkpoints, and
its behaviour in training (no divergence, no empty_cache on the hot path)."""
import copy
import warnings
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.ao.quantization.observer import MinMaxObserver, MovingAverageMinMaxObserver

from advfine.core import quantize, syncs
from advfine.core.attacks import pgd
from advfine.core.attacks.mode import attack_mode
from advfine.core.attacks.pgd import PGDAttack
from advfine.core.attacks.threat import ThreatModel
from advfine.core.cost import model_cost, weight_storage_bytes
from advfine.core.kept import KeptFromWeight
from advfine.core.models import build_model, default_arch
from advfine.core.train import train_model, training_step
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


def bits_of(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32)  # bitwise comparison: -0.0 and +0.0 differ, NaN equals NaN


def half_steps(scale: float, n: int = 300) -> torch.Tensor:
    """Points at and next to the half-steps (k + 0.5) * scale, for k in [-n, n)."""
    x = (torch.arange(-n, n, dtype=torch.float32) + 0.5) * scale
    inf = torch.tensor(float("inf"))
    return torch.cat([x, torch.nextafter(x, inf), torch.nextafter(x, -inf)])


# (qmin, qmax, zero_point, clamp): INT8 activations observe 7-bit steps and clamp to the uint8 range
RANGES = [(0, 127, 0, (0, 255)), (0, 127, 37, (0, 255)), (0, 255, 10, None), (0, 15, 3, None), (0, 3, 1, None),
          (0, 65535, 300, None), (-127, 127, 0, None)]
AWKWARD_SCALES = [0.1, 1 / 3, 0.0078125, 0.0078125 * 3, 0.02, 0.25, 1e-3 / 7]


@pytest.mark.parametrize("qmin,qmax,zero_point,clamp", RANGES)
def test_the_cpu_fake_quantizer_equals_torchs_kernel_bitwise(qmin, qmax, zero_point, clamp):
    """FakeQuantizePerTensorCPU replaces torch's slow CPU kernel: bitwise the same values and clipped-STE
    gradient, at exact half-steps (where x / scale and x * (1 / scale) round differently) and on random
    inputs, for awkward and random scales."""
    lo, hi = clamp or (qmin, qmax)
    g = torch.Generator().manual_seed(qmax + zero_point)
    scales = AWKWARD_SCALES + (torch.rand(20, generator=g) * 0.5 + 1e-4).tolist()
    for scale in scales:
        x = torch.cat([half_steps(scale), torch.randn(2000, generator=g) * scale * (hi - lo) / 2,
                       torch.zeros(2), -torch.zeros(2)]).requires_grad_(True)
        fused = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, lo, hi)
        ours = quantize.FakeQuantizePerTensorCPU.apply(x, scale, zero_point, lo, hi)
        assert torch.equal(bits_of(fused), bits_of(ours)), scale
        grad_out = torch.randn(x.shape, generator=g)
        (g_fused,) = torch.autograd.grad(fused, x, grad_out)
        (g_ours,) = torch.autograd.grad(ours, x, grad_out)
        assert torch.equal(bits_of(g_fused), bits_of(g_ours)), scale
        assert 0 < (g_ours != 0).float().mean() < 1  # some values clamped, some not


def test_a_fake_quant_model_computes_the_same_on_the_cpu_and_the_cuda_code_path(small_parent, data):
    """The per-tensor quantizers' CPU path (Python numbers, FakeQuantizePerTensorCPU) and CUDA path (torch's
    kernel with tensor qparams) agree bitwise, values and input gradients."""
    for bits in (8, 4, 2):
        q = quantize.quantize_ptq(small_parent, bits, data["calib"])
        x = data["x"].clone().requires_grad_(True)
        out = q(x)
        (grad,) = torch.autograd.grad(out.sum(), x)
        with quantize.emulate_cuda_path():
            out_cuda = q(x)
            (grad_cuda,) = torch.autograd.grad(out_cuda.sum(), x)
        assert torch.equal(bits_of(out), bits_of(out_cuda)) and torch.equal(bits_of(grad), bits_of(grad_cuda))


@pytest.mark.parametrize("bits", [16, 8, 4, 2])
def test_weights_fake_quantize_as_torchs_per_channel_op_with_its_integer_zero_point(bits):
    """WeightFakeQuant passes a floating zero point (no host-side range check): values and clipped-STE
    gradients are bitwise those of torch.fake_quantize_per_channel_affine with the int32 zero point it
    keeps (as before), on random weights and on weights at half-steps."""
    q = quantize._qconfig(bits, "ptq").weight()
    assert q.zero_point.dtype == torch.int32
    g = torch.Generator().manual_seed(bits)
    for w in (torch.randn(16, 8, 3, 3, generator=g) * 0.1, torch.randn(10, 32, generator=g)):
        w[:, 0] = w[:, 0].abs().amax()  # some weights at a channel's extreme
        w = w.requires_grad_(True)
        ours = q(w)
        scale = q.scale.clone()
        reference = torch.fake_quantize_per_channel_affine(w, scale, q.zero_point, 0, q.clamp_min, q.clamp_max)
        assert torch.equal(bits_of(ours), bits_of(reference))
        grad_out = torch.randn(w.shape, generator=g)
        assert torch.equal(torch.autograd.grad(ours, w, grad_out)[0], torch.autograd.grad(reference, w, grad_out)[0])
        ties = (torch.randint(-8, 8, w.shape, generator=g) + 0.5) * scale.view(-1, *[1] * (w.dim() - 1))
        with torch.no_grad():
            ties_fq = q(ties)  # the scale is now that of these weights
            expected = torch.fake_quantize_per_channel_affine(ties, q.scale, q.zero_point, 0, q.clamp_min, q.clamp_max)
        assert torch.equal(bits_of(ties_fq), bits_of(expected))


@pytest.mark.parametrize("observer_class", [MinMaxObserver, MovingAverageMinMaxObserver])
def test_the_sync_free_observers_compute_torchs_values_bitwise(observer_class):
    """FakeQuant observes with torch.ao's formulas without its host-side checks: min/max, scale and zero
    point bitwise those of torch.ao's observer, from the first observation on (and before it)."""
    g = torch.Generator().manual_seed(0)
    for qmin, qmax, dtype in ((0, 127, torch.quint8), (0, 15, torch.quint8), (0, 3, torch.quint8),
                              (0, 65535, torch.qint32)):
        ours = observer_class(quant_min=qmin, quant_max=qmax, dtype=dtype)
        reference = copy.deepcopy(ours)
        for step in range(25):
            if step:
                x = torch.randn(200, generator=g) * (step % 6 + 0.5) + (step % 7 - 3)
                quantize._observe_min_max(ours, x.abs() if step % 5 == 0 else x)
                reference(x.abs() if step % 5 == 0 else x)
            scale, zero_point = quantize._affine_qparams(ours)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.ao's "must run observer before" on the empty one
                ref_scale, ref_zero_point = reference.calculate_qparams()
            assert torch.equal(bits_of(ours.min_val), bits_of(reference.min_val))
            assert torch.equal(bits_of(ours.max_val), bits_of(reference.max_val))
            assert torch.equal(bits_of(scale), bits_of(ref_scale)) and scale.shape == ref_scale.shape
            assert torch.equal(zero_point, ref_zero_point.to(zero_point.dtype))


def test_a_checkpoint_of_the_old_scheme_names_its_file(small_parent, tmp_path):
    from advfine.pipeline.checkpoints import save_checkpoint

    path = tmp_path / "old.pt"
    save_checkpoint(path, small_parent.state_dict(), small_cnn8_arch(), {"mode": "ptq", "bits": 8, "calibration": {}})
    with pytest.raises(ValueError, match="old.pt.*re-run its compress/qat job"):
        load_model(path)


# ------------------------------------------------------------ the GPU path: syncs, weights kept

def test_the_sync_counter_knows_the_host_reads_inside_torchs_per_channel_op():
    """The counter's rule for torch.fake_quantize_per_channel_affine (two .item() inside the op for an
    integer zero point, none for a floating one) is what the profiler sees the op do: the check is in
    the code shared by the CPU and CUDA kernels."""
    w, scale = torch.randn(4, 5), torch.ones(4)
    for zero_point, reads in ((torch.zeros(4, dtype=torch.int32), 2), (torch.zeros(4), 0)):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            torch.fake_quantize_per_channel_affine(w, scale, zero_point, 0, -7, 7)
        assert sum(e.name == "aten::_local_scalar_dense" for e in prof.events()) == reads
        counted = syncs.count(lambda: torch.fake_quantize_per_channel_affine(w, scale, zero_point, 0, -7, 7))
        assert counted.syncs == reads
    x = torch.randn(8)
    counted = syncs.count(lambda: (x.sum().item(), bool(x[0] > 0), x[x > 0], x.nonzero()))
    assert counted.syncs == 4 and counted.ops > 4


@pytest.mark.parametrize("bits,mode", [(8, "ptq"), (4, "ptq"), (2, "ptq"), (8, "qat"), (4, "qat"), (1, "ptq"),
                                       (1, "qat")])
def test_fake_quantization_reads_nothing_on_the_host_on_the_cuda_path(small_parent, data, bits, mode):
    """On the CUDA code path a fake-quant model's forward and backward, in train mode (QAT observes) and
    eval mode, with gradients to the weights or to the input only, read no tensor value on the host:
    no device sync. (On the CPU path per-tensor quantizers read their qparams with .item(), free there.)"""
    make = quantize.prepare_qat if mode == "qat" else quantize.quantize_ptq
    q = make(small_parent, bits, data["calib"])
    x = data["x"].clone().requires_grad_(True)

    def train_and_attack_passes():
        q.train()
        F.cross_entropy(q(x), data["y"]).backward()
        q.eval()
        with torch.no_grad():
            q(x)
        torch.autograd.grad(q(x).sum(), x)

    with quantize.emulate_cuda_path():
        counted = syncs.count(train_and_attack_passes)
    assert counted.syncs == 0, counted.sync_ops
    assert counted.ops > 100
    if bits > 1:
        assert syncs.count(train_and_attack_passes).syncs > 0  # the CPU path's .item(): the counter sees them


def kept_weights(model) -> list:
    return [k for m in model.modules() for k in vars(m).values() if isinstance(k, KeptFromWeight)]


def reuses(model) -> int:
    return sum(k.reuses for k in kept_weights(model))


@pytest.mark.parametrize("bits", [8, 1])
def test_quantized_weights_are_kept_while_the_weights_do_not_change(small_parent, data, bits):
    """Fake-quantized (and binary) weights are computed once while the weights are unchanged and take no
    gradient: eval forwards and attacks reuse them, with outputs identical to computing them anew;
    training forwards, an optimizer step, load_state_dict and .to() make them computed again; nothing
    kept is saved or copied."""
    q = quantize.quantize_ptq(small_parent, bits, data["calib"])
    x, y = data["x"], data["y"]
    with torch.no_grad():
        first = q(x)
        before = reuses(q)
        again = q(x)
    assert reuses(q) > before and torch.equal(first, again)
    with torch.no_grad():
        fresh = copy.deepcopy(q)  # copies start empty: computed anew
        assert torch.equal(fresh(x), first) and reuses(fresh) == 0

    before = reuses(q)
    attack = PGDAttack(ThreatModel("linf", 0.1), step_size=0.03, steps=3, random_start=True)
    x_adv = attack(q, x, y, generator=torch.Generator().manual_seed(0))
    assert reuses(q) - before >= 3 * (len(kept_weights(q)))  # every attack step reuses every weight
    assert all(p.requires_grad for p in q.parameters())  # attack_mode restored them
    x_adv_fresh = attack(copy.deepcopy(q), x, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x_adv, x_adv_fresh)

    q.train()  # training: the weights take gradients, computed at every forward, never kept
    before = reuses(q)
    opt = torch.optim.SGD(q.parameters(), lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(q(x), y).backward()
    assert reuses(q) == before
    opt.step()
    q.eval()
    with torch.no_grad():
        stepped = q(x)
        assert not torch.equal(stepped, first)
        assert torch.equal(stepped, copy.deepcopy(q)(x))  # the new weights', not the kept ones'

        q.load_state_dict(small_quantized := quantize.quantize_ptq(small_parent, bits, data["calib"]).state_dict())
        assert torch.equal(q(x), first)
        before = reuses(q)
        q.to(memory_format=torch.channels_last)  # new storage for the conv weights
        assert torch.equal(q(x), first) and reuses(q) - before < len(kept_weights(q))
    assert not any("kept" in key for key in small_quantized)
    assert set(q.state_dict()) == set(small_quantized)
    if bits > 1:
        assert {str(v.dtype) for k, v in small_quantized.items() if k.endswith("weight_fake_quant.zero_point")} \
            == {"torch.int32"}  # checkpoints keep the integer zero point convert_fx reads


def test_attack_mode_freezes_parameters_and_restores_them_and_the_mode():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(), torch.nn.Linear(3, 2)).train()
    model[0].bias.requires_grad_(False)  # a parameter frozen by its owner stays frozen
    with pytest.raises(RuntimeError, match="inside"):
        with attack_mode(model):
            assert not model.training and not any(p.requires_grad for p in model.parameters())
            raise RuntimeError("inside")
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == [True, False, True, True]


@pytest.mark.parametrize("bits,mode", [(4, "ptq"), (8, "qat"), (1, "ptq")])
def test_adversarial_training_is_unchanged_by_frozen_attacks_and_kept_weights(small_parent, data, bits, mode,
                                                                              monkeypatch):
    """A few PGD adversarial training steps end with bitwise the weights they had before attacks froze the
    parameters and weights were kept: the same adversarial points, the same updates (within one run)."""
    make = quantize.prepare_qat if mode == "qat" else quantize.quantize_ptq
    start = make(small_parent, bits, data["calib"])
    attack = PGDAttack(ThreatModel("linf", 0.1), step_size=0.03, steps=3, random_start=True)
    x = torch.cat(data["calib"])
    y = torch.randint(0, 10, (len(x),), generator=torch.Generator().manual_seed(0))

    def train():
        model = copy.deepcopy(start)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        generator = torch.Generator().manual_seed(0)
        for xb, yb in zip(x.split(8), y.split(8)):
            training_step(model, opt, xb, yb, attack, generator)
        return model

    now = train()
    assert reuses(now) > 0 and all(p.requires_grad for p in now.parameters())

    @contextmanager
    def eval_only(model):  # attacks before: eval mode, parameters left requiring gradients
        was_training = model.training
        model.eval()
        try:
            yield model
        finally:
            model.train(was_training)

    monkeypatch.setattr(pgd, "attack_mode", eval_only)
    monkeypatch.setattr(KeptFromWeight, "get", lambda self, w, compute: compute(w))  # computed at every forward
    before = train()
    assert reuses(before) == 0
    for (key, a), b in zip(now.state_dict().items(), before.state_dict().values()):
        assert torch.equal(bits_of(a.float()), bits_of(b.float())), key
    assert any(not torch.equal(a, b) for a, b in zip(now.parameters(), start.parameters()))  # it trained


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_fake_quantization_never_syncs_and_rounds_as_on_the_cpu(small_parent, data):
    """What the CPU checks above stand for, checked on a GPU when there is one."""
    cuda = torch.device("cuda")
    for bits, mode in ((8, "ptq"), (4, "qat"), (1, "qat")):
        make = quantize.prepare_qat if mode == "qat" else quantize.quantize_ptq
        q = make(small_parent, bits, data["calib"]).to(cuda)
        x = data["x"].to(cuda).requires_grad_(True)
        y = data["y"].to(cuda)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            q.train()
            F.cross_entropy(q(x), y).backward()
            with attack_mode(q):
                torch.autograd.grad(F.cross_entropy(q(x), y), x)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    for scale in AWKWARD_SCALES:
        x = torch.cat([half_steps(scale), torch.randn(1000) * scale * 100])
        ours = quantize.FakeQuantizePerTensorCPU.apply(x, scale, 10, 0, 255)
        kernel = torch.fake_quantize_per_tensor_affine(x.to(cuda), scale, 10, 0, 255).cpu()
        assert torch.equal(bits_of(ours), bits_of(kernel))
