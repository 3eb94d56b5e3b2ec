"""Tests of advfine.core.prune (NNI pruning), pinned by golden values on the paper's CNN8 and ResNet-18, and the
model costs of dense and pruned models."""
import copy
import hashlib
import json
from pathlib import Path

import pytest
import torch
from nni.compression.pruning import L1NormPruner
from nni.compression.utils.counter import count_flops_params
from torch import nn

from advfine.core.cost import model_cost
from advfine.core.models import build_model, count_parameters, default_arch
from advfine.core.prune import prune_filters_l1

from conftest import random_images, small_cnn8_arch


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


def test_pruning_a_dead_layer_fails_clearly(parent, data):
    # NNI's ModelSpeedup drops every channel with a constant output: a layer of zero filters would vanish.
    dead = copy.deepcopy(parent)
    with torch.no_grad():
        dead.features[4].weight.zero_()
        dead.features[4].bias.zero_()
    with pytest.raises(ValueError, match="sparsity 0.5 would leave a layer with no channels"):
        prune_filters_l1(dead, small_arch(), 0.5, data["x"][:2])


# ----------------------------------------------------------------------------------------- golden

# Reference values made by the code named in the file's "source": the kept filters of every conv, the
# parameter count and the logits of the pruned paper-size models. They pin what pruning removes, whatever
# traces the model for ModelSpeedup.
GOLDEN = json.loads((Path(__file__).parent / "data" / "prune_golden.json").read_text())
GOLDEN_ARCHS = {"cnn8": (1, 28), "resnet18": (3, 32)}  # name -> input channels, input size


def golden_parent(name: str) -> tuple[nn.Module, dict]:
    """A paper-size model whose weights are the same bits on every CPU (uniform draws only), with filters
    scaled by distinct factors so that the L1 ranking has wide margins, and one distinct marker value per
    output channel (the conv's bias, else its BatchNorm's running_mean) that shows which channels are kept."""
    c_in, size = GOLDEN_ARCHS[name]
    arch = default_arch(name, c_in, 10, size, [0.5] * c_in, [0.5] * c_in)
    model = build_model(arch)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                c_out, fan_in = m.weight.shape[0], m.weight[0].numel()
                scale = 0.5 + torch.randperm(c_out, generator=g).float() / c_out
                w = (torch.rand(m.weight.shape, generator=g) * 2 - 1) * (6.0 / fan_in) ** 0.5
                m.weight.copy_(w * scale.view(-1, *[1] * (w.dim() - 1)))
                if m.bias is not None:
                    m.bias.copy_((torch.randperm(c_out, generator=g).float() + 1) / c_out * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_((torch.randperm(c, generator=g).float() - c / 2) / c * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_((torch.rand(c, generator=g) - 0.5) * 0.2)
    return model.eval(), arch


def golden_inputs(name: str) -> torch.Tensor:
    c_in, size = GOLDEN_ARCHS[name]
    return torch.rand(4, c_in, size, size, generator=torch.Generator().manual_seed(1))


def channel_markers(model: nn.Module) -> dict:
    """Conv name -> its marker tensor (one distinct value per output channel, see golden_parent)."""
    modules = dict(model.named_modules())
    return {name: m.bias if m.bias is not None
            else modules[name.replace("downsample.0", "downsample.1") if "downsample" in name
                         else name.replace("conv", "bn")].running_mean
            for name, m in modules.items() if isinstance(m, nn.Conv2d)}


def kept_channels(parent: nn.Module, pruned: nn.Module) -> dict:
    """Conv name -> the indices of the parent's output channels that the pruned model kept, in its order."""
    after = channel_markers(pruned)
    kept = {}
    for name, marker in channel_markers(parent).items():
        position = {value: i for i, value in enumerate(marker.tolist())}
        kept[name] = [position[value] for value in after[name].tolist()]
    return kept


@pytest.mark.parametrize("case", [
    pytest.param(case, id=f"{case['arch']}-{case['sparsity']}",
                 marks=[pytest.mark.slow] if case["arch"] == "resnet18" else [])
    for case in GOLDEN["cases"]])
def test_pruning_matches_golden(case):
    parent, arch = golden_parent(case["arch"])
    x = golden_inputs(case["arch"])
    model, _ = prune_filters_l1(parent, arch, case["sparsity"], x[:2])
    kept = kept_channels(parent, model)
    assert {name: len(k) for name, k in kept.items()} == case["kept_counts"]
    assert all(k == sorted(k) for k in kept.values())
    assert hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest() == case["kept_sha256"]
    assert count_parameters(model) == case["params"]
    if case["arch"] == "cnn8":
        assert model.fc1.in_features == case["fc1_in_features"]
    with torch.no_grad():
        torch.testing.assert_close(model(x), torch.tensor(case["logits"]), rtol=1e-4, atol=1e-5)


def test_golden_covers_both_models_at_two_sparsities():
    assert sorted((c["arch"], c["sparsity"]) for c in GOLDEN["cases"]) == [
        ("cnn8", 0.5), ("cnn8", 0.8), ("resnet18", 0.5), ("resnet18", 0.8)]


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
