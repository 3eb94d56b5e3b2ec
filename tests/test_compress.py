"""Tests of advfine.compress (NNI pruning, PTQ, quantized checkpoints, costs) and advfine.nni_compat."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nni.compression.pruning import L1NormPruner  # noqa: E402
from nni.compression.utils.counter import count_flops_params  # noqa: E402

from advfine import compress, nni_compat  # noqa: E402
from advfine.models import build_model, count_parameters, default_arch  # noqa: E402
from advfine.cost import model_cost, weight_storage_bytes

from conftest import small_cnn8_arch  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models gain nothing from 2 threads, and when another process busies a core, 2 torch threads
    # made every op here ~100x slower (measured): keep these tests fast and stable.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


small_arch = small_cnn8_arch


@pytest.fixture(scope="module")
def parent(small_parent):
    return small_parent


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    return {"calib": [torch.rand(16, 1, 28, 28, generator=g) for _ in range(2)],
            "x": torch.rand(16, 1, 28, 28, generator=g),
            "y": torch.randint(0, 10, (16,), generator=g)}


def max_diff(a, b):
    return (a - b).abs().max().item()


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------- nni_compat

def test_nni_fixes_apply_and_are_idempotent():
    from nni.common.concrete_trace_utils import concrete_tracer as ct
    nni_compat.check_nni_sources()
    nni_compat.apply_nni_torch_fixes()
    trace, wrapper = ct.ConcreteTracer.trace, ct.node_is_impure_wrapper
    nni_compat.apply_nni_torch_fixes()
    assert ct.ConcreteTracer.trace is trace and ct.node_is_impure_wrapper is wrapper
    assert hasattr(trace, "_advfine_original") and hasattr(wrapper, "_advfine_original")
    nni_compat.check_nni_sources()  # still checks NNI's original code after patching


def test_pruning_works_in_a_fresh_process():
    # The other tests share one process where the fixes are already applied; check that
    # prune_filters_l1 applies them itself (NNI unpatched fails on torch >= 2.3).
    code = ("import torch; from advfine.models import build_model, default_arch; "
            "from advfine.compress import prune_filters_l1; "
            "a = default_arch('cnn8', 1, 10, 28, [0.5], [0.5]); a['conv_channels'] = [4] * 6; a['hidden'] = 8; "
            "print(prune_filters_l1(build_model(a), a, 0.5, torch.rand(2, 1, 28, 28))[1]['conv_channels'])")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[2, 2, 2, 2, 2, 2]"


@pytest.mark.parametrize("name", ["ConcreteTracer.trace", "node_is_impure_wrapper"])
def test_nni_source_check_fails_loudly(monkeypatch, name):
    monkeypatch.setitem(nni_compat.EXPECTED_SNIPPETS, name, "this snippet is not in NNI")
    with pytest.raises(RuntimeError, match=name.replace(".", r"\.")):
        nni_compat.check_nni_sources()
    with pytest.raises(RuntimeError, match="NNI source changed"):
        nni_compat.apply_nni_torch_fixes()


# ---------------------------------------------------------------------------------------- pruning

SPARSITY = 0.3


@pytest.fixture(scope="module")
def pruned(parent, data):
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    model, arch = compress.prune_filters_l1(parent, small_arch(), SPARSITY, data["x"][:2])
    return {"model": model, "arch": arch, "parent_state_before": before}


def test_pruning_removes_filters_physically(parent, pruned, data):
    model, arch = pruned["model"], pruned["arch"]
    base = small_arch()["conv_channels"]
    # NNI's _ratio_mask prunes int(C * sparsity) filters per layer
    assert arch["conv_channels"] == [c - int(c * SPARSITY) for c in base] == [6, 6, 12, 12, 12, 12]
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == arch["conv_channels"]
    assert [c.in_channels for c in convs[1:]] == arch["conv_channels"][:-1]
    assert count_parameters(model) < count_parameters(parent)
    assert model(data["x"]).shape == parent(data["x"]).shape == (16, 10)
    # a plain model: eval mode, no NNI leftovers, state_dict loads into build_model(arch)
    assert not any(m.training for m in model.modules())
    assert not any("_nni" in k for k in model.state_dict())
    fresh = build_model(arch)
    fresh.load_state_dict(model.state_dict())


def test_pruning_leaves_parent_untouched(parent, pruned):
    assert same_state(parent.state_dict(), pruned["parent_state_before"])
    assert not any(hasattr(m, "_nni_wrapper") for m in parent.modules())


def test_masked_and_sped_up_outputs_match(parent, pruned, data):
    masked = copy.deepcopy(parent)
    pruner = L1NormPruner(masked, [{"op_types": ["Conv2d"], "sparse_ratio": SPARSITY}])
    pruner.compress()
    with torch.no_grad():
        assert max_diff(masked(data["x"]), pruned["model"](data["x"])) < 1e-5
        assert max_diff(parent(data["x"]), pruned["model"](data["x"])) > 1e-4  # pruning did something


@pytest.mark.parametrize("bad", [0, 0.0, 1, 1.0, -0.2, 1.5, True, "0.5"])
def test_pruning_rejects_bad_sparsity(parent, data, bad):
    with pytest.raises(ValueError, match="sparsity"):
        compress.prune_filters_l1(parent, small_arch(), bad, data["x"][:2])


# ------------------------------------------------------------------------------------------- PTQ

@pytest.fixture(scope="module")
def quantized(parent, data):
    return {bits: compress.quantize_ptq(parent, bits, data["calib"]) for bits in (8, 2)}


def test_ptq_error_grows_as_bits_shrink(parent, quantized, data):
    with torch.no_grad():
        ref = parent(data["x"])
        err = {b: ((q(data["x"]) - ref).norm() / ref.norm()).item() for b, q in quantized.items()}
    # An untrained He-initialized net on random inputs has wide per-tensor activation ranges, so
    # even INT8 shows a few percent output error; accuracy after INT8 on a trained model is
    # checked in test_stages.py.
    assert 0 < err[8] < 0.1
    assert err[2] > 5 * err[8]


def test_ptq_leaves_input_untouched_and_returns_eval_model(parent, quantized):
    state = {k: v.clone() for k, v in parent.state_dict().items()}
    q = compress.quantize_ptq(parent, 4, [torch.rand(4, 1, 28, 28)])
    assert same_state(parent.state_dict(), state)
    assert not any(hasattr(m, "_nni_wrapper") for m in parent.modules())
    assert hasattr(q.features[0], "_nni_wrapper") and not any(m.training for m in q.modules())


def test_ptq_bits_validation(parent, data):
    # bits=1 is accepted: the binary scheme of advfine.binary (tests/test_quantization_extra.py)
    for bad in (0, 3, 32, 8.0, True, "8"):
        with pytest.raises(ValueError, match="bits"):
            compress.quantize_ptq(parent, bad, data["calib"])
    with pytest.raises(ValueError, match="calibration"):
        compress.quantize_ptq(parent, 8, [])


def test_quantized_input_gradient_and_modes(quantized, data):
    q = copy.deepcopy(quantized[8])
    for train in (True, False):
        q.train(train)
        assert all(m.training == train for m in q.modules())
        x = data["x"].clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(q(x), data["y"])
        (grad,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():  # no BatchNorm/dropout: both modes give the same outputs
        out_eval = q(data["x"])
        assert max_diff(q.train()(data["x"]), out_eval) == 0


def test_quantized_deepcopy_after_grad_forward(quantized, data):
    q = quantized[8]
    q(data["x"]).sum().backward()  # leaves autograd history behind, unless the detach hook works
    q.zero_grad()
    twin = copy.deepcopy(q)
    with torch.no_grad():
        assert max_diff(twin(data["x"]), q(data["x"])) == 0
        twin.features[0]._nni_wrapper.weight.add_(1.0)
        assert max_diff(twin(data["x"]), q(data["x"])) > 0  # independent copies


def test_quantized_state_frozen_after_calibration(quantized, data):
    q = copy.deepcopy(quantized[8])
    before = compress.quant_state(q)
    with torch.no_grad():
        q(10 * data["x"])  # far outside the calibration range
    after = compress.quant_state(q)
    for layer, targets in before["calibration"].items():
        for target, entry in targets.items():
            for key in ("scale", "zero_point", "tracked_min", "tracked_max"):
                assert torch.equal(entry[key], after["calibration"][layer][target][key]), (layer, target, key)


# -------------------------------------------------------------------------- quantized checkpoints

def save_and_restore(qmodel, arch, path):
    torch.save({"arch": arch, "state": compress.float_state_dict(qmodel), "quant": compress.quant_state(qmodel)}, path)
    ckpt = torch.load(path, weights_only=True)
    return compress.restore_quantized(ckpt["arch"], ckpt["state"], ckpt["quant"])


@pytest.mark.parametrize("use_pruned", [False, True])
def test_quantized_checkpoint_roundtrip_and_after_finetuning(parent, pruned, data, tmp_path, use_pruned):
    base, arch = (pruned["model"], pruned["arch"]) if use_pruned else (parent, small_arch())
    q = compress.quantize_ptq(base, 4, data["calib"])
    assert compress.float_state_dict(q).keys() == build_model(arch).state_dict().keys()
    x = data["x"]
    with torch.no_grad():
        restored = save_and_restore(q, arch, tmp_path / "q.pt")
        assert max_diff(restored(x), q(x)) < 1e-6
        assert max_diff(restored(x), base(x)) > 1e-3  # quantization active after restore (not bypassed)
    assert compress.quant_state(restored)["bits"] == 4

    # fine-tune a few SGD steps through the straight-through estimator, then save again
    weights_before = compress.float_state_dict(q)
    scale_before = q.features[0]._nni_wrapper.weight_scale.clone()
    opt = torch.optim.SGD(q.parameters(), lr=0.5)
    q.train()
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(q(x), data["y"]).backward()
        opt.step()
    q.eval()
    weights_after = compress.float_state_dict(q)
    assert any(not torch.equal(weights_before[k], weights_after[k]) for k in weights_before)
    # NNI keeps the calibration scales fixed when weights change
    assert torch.equal(q.features[0]._nni_wrapper.weight_scale, scale_before)
    with torch.no_grad():
        restored = save_and_restore(q, arch, tmp_path / "q_ft.pt")
        assert max_diff(restored(x), q(x)) < 1e-6
    # the restored model fine-tunes on exactly like the original
    for model in (q, restored):
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), data["y"]).backward()
        opt.step()
    with torch.no_grad():
        assert max_diff(restored(x), q(x)) < 1e-5


def test_restore_rejects_mismatched_state(parent, quantized):
    state, quant = compress.float_state_dict(quantized[8]), compress.quant_state(quantized[8])
    quant["calibration"].pop("fc2")
    with pytest.raises(ValueError, match="does not match"):
        compress.restore_quantized(small_arch(), state, quant)
    with pytest.raises(ValueError, match="does not match the binary"):  # NNI calibration, INT1 bits
        compress.restore_quantized(small_arch(), state, {**quant, "bits": 1})


# ----------------------------------------------------------------------------------------- costs

def test_model_cost_of_paper_cnn8():
    model = build_model(default_arch("cnn8", 1, 10, 28, [0.5], [0.5]))
    cost = model_cost(model, (1, 28, 28))
    assert cost == {"params": 549_994, "macs": 13_686_528}  # "13.7 M" in the paper
    assert model_cost(model, (1, 1, 28, 28)) == cost
    nni_macs, nni_params, _ = count_flops_params(model, (1, 1, 28, 28), verbose=False)
    assert (nni_macs, nni_params) == (cost["macs"], cost["params"])


def test_model_cost_of_pruned_and_quantized(parent, pruned, quantized):
    full = model_cost(parent, (1, 28, 28))
    assert model_cost(quantized[8], (1, 28, 28)) == full
    small = model_cost(pruned["model"], (1, 28, 28))
    assert small["params"] == count_parameters(pruned["model"]) < full["params"]
    assert small["macs"] < full["macs"]
    assert not quantized[8].training  # model_cost restores the mode


def test_weight_storage_bytes(parent, quantized):
    model = build_model(default_arch("cnn8", 1, 10, 28, [0.5], [0.5]))
    biases = 32 + 32 + 64 + 64 + 128 + 128 + 128 + 10
    weights = 549_994 - biases
    assert weight_storage_bytes(model, None) == 549_994 * 4
    assert weight_storage_bytes(model, 32) == 549_994 * 4
    assert weight_storage_bytes(model, 8) == weights + biases * 4
    assert weight_storage_bytes(model, 2) == weights // 4 + biases * 4
    for bits in (None, 8, 2):  # a quantized model counts its float weights once
        assert weight_storage_bytes(quantized[8], bits) == weight_storage_bytes(parent, bits)
    with pytest.raises(ValueError):
        weight_storage_bytes(model, 0)


def test_the_first_layers_input_can_stay_in_float(small_parent, tmp_path):
    """quantize_first_input=False: the first conv sees the float image (no bit-depth reduction of the
    input), every other input is still quantized, and a checkpoint restores it that way."""
    from advfine.checkpoints import load_model, save_model

    calibration = [torch.rand(16, 1, 28, 28) for _ in range(2)]
    for make in (compress.quantize_ptq, compress.prepare_qat):
        plain = make(small_parent, 4, calibration, quantize_first_input=False)
        spaces = {name: set(w.quantization_target_spaces) for name, w in compress._wrappers(plain).items()}
        assert compress.first_layer(plain) == "features.0"
        assert spaces["features.0"] == {"weight", "_output_0"}  # NNI numbers a layer's inputs and outputs
        assert all(targets == {"weight", "_input_0", "_output_0"} for name, targets in spaces.items()
                   if name != "features.0")
        default = make(small_parent, 4, calibration)
        assert "_input_0" in compress._wrappers(default)["features.0"].quantization_target_spaces
        save_model(tmp_path / "q.pt", plain, small_cnn8_arch())
        restored, _ = load_model(tmp_path / "q.pt")
        x = torch.rand(4, 1, 28, 28)
        with torch.no_grad():
            assert torch.equal(restored(x), plain.eval()(x))
        assert "_input_0" not in compress._wrappers(restored)["features.0"].quantization_target_spaces
