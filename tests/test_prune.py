"""Tests of advfine.prune (NNI pruning), advfine.nni_compat and the model costs of dense and pruned models."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nni.compression.pruning import L1NormPruner  # noqa: E402
from nni.compression.utils.counter import count_flops_params  # noqa: E402

from advfine import nni_compat  # noqa: E402
from advfine.prune import prune_filters_l1
from advfine.models import build_model, count_parameters, default_arch  # noqa: E402
from advfine.cost import model_cost

from conftest import random_images, small_cnn8_arch  # noqa: E402


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
    return random_images()


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
            "from advfine.prune import prune_filters_l1; "
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
    model, arch = prune_filters_l1(parent, small_arch(), SPARSITY, data["x"][:2])
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
        prune_filters_l1(parent, small_arch(), bad, data["x"][:2])


# ----------------------------------------------------------------------------------------- costs

def test_model_cost_of_paper_cnn8():
    model = build_model(default_arch("cnn8", 1, 10, 28, [0.5], [0.5]))
    cost = model_cost(model, (1, 28, 28))
    assert cost == {"params": 549_994, "macs": 13_686_528}  # "13.7 M" in the paper
    assert model_cost(model, (1, 1, 28, 28)) == cost
    nni_macs, nni_params, _ = count_flops_params(model, (1, 1, 28, 28), verbose=False)
    assert (nni_macs, nni_params) == (cost["macs"], cost["params"])


def test_model_cost_of_pruned(parent, pruned):
    full = model_cost(parent, (1, 28, 28))
    small = model_cost(pruned["model"], (1, 28, 28))
    assert small["params"] == count_parameters(pruned["model"]) < full["params"]
    assert small["macs"] < full["macs"]
