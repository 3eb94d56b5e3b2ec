"""Figure 2 (advfine.core.features) on tiny untrained CNN8s, including NNI fake-quantized ones."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from advfine.core import features
from advfine.core.attacks.pgd import PGDAttack
from advfine.core.attacks.threat import ThreatModel
from advfine.core.models import build_model, default_arch, layer_outputs
from advfine.core.quantize import is_quantized
from advfine.report.figure2 import plot_figure2

ATTACK = PGDAttack(ThreatModel("linf", 0.1), step_size=0.05, steps=2, random_start=True)
N = 20
PRUNED_CHANNELS = (8, 8, 16, 16, 32, 32)  # the shape a pruned CNN8 is rebuilt with


def cnn8(seed: int, conv_channels=None):
    torch.manual_seed(seed)
    arch = default_arch("cnn8", 1, 10, 28, [0.5], [0.5])
    if conv_channels is not None:
        arch["conv_channels"] = list(conv_channels)
    return build_model(arch).eval()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(N, 1, 28, 28, generator=g), torch.full((N,), 8)


@pytest.fixture(scope="module")
def quantized(images):
    """Two PTQ INT8 models as quantize.quantize_ptq makes them (ReLUs fused into their layers)."""
    from advfine.core.quantize import quantize_ptq

    return [quantize_ptq(cnn8(seed), 8, [images[0][:10]]) for seed in (2, 3)]


@pytest.fixture(scope="module")
def pairs(quantized):
    q_st, q_ad = quantized
    return [("f_st", cnn8(0), "f_rb", cnn8(1)),
            ("T_st(f_st^q)", q_st, "T_ad(f_st^q)", q_ad),
            ("T_st(f_st^p)", cnn8(4, PRUNED_CHANNELS), "T_ad(f_st^p)", cnn8(5, PRUNED_CHANNELS))]


@pytest.fixture(scope="module")
def embeddings(pairs, images):
    return features.figure2_embeddings(pairs, *images, ATTACK, seed=0)


def _forward_hook_count(model):
    return sum(len(m._forward_hooks) for m in model.modules())


# ----------------------------------------------------------------------------- hooks


def test_layer_features_shapes_output_and_cleanup(images):
    x, _ = images
    model = cnn8(0).train()
    feats = features.layer_features(model, x, layers=tuple(range(1, 9)))
    assert {k: v.shape for k, v in feats.items()} == {
        1: (N, 32 * 28 * 28), 2: (N, 32 * 14 * 14), 3: (N, 64 * 14 * 14), 4: (N, 64 * 7 * 7),
        5: (N, 128 * 7 * 7), 6: (N, 128 * 4 * 4), 7: (N, 128), 8: (N, 10)}
    with torch.no_grad():
        logits = model.eval()(x).numpy()
    np.testing.assert_array_equal(feats[8], logits)  # layer 8 is the network's output
    assert (feats[6] >= 0).all() and (feats[7] >= 0).all()  # ReLU outputs
    model.train()
    features.layer_features(model, x)
    assert model.training and _forward_hook_count(model) == 0  # mode restored, hooks removed


def test_layer_features_on_fake_quantized_model(images, quantized):
    x, _ = images
    qmodel = quantized[0]
    assert is_quantized(qmodel)
    assert layer_outputs(qmodel)[-3:] == ["features.10", "fc1", "fc2"]  # ReLUs fused into their layers
    hooks_before = _forward_hook_count(qmodel)
    feats = features.layer_features(qmodel, x)
    assert {k: v.shape for k, v in feats.items()} == {6: (N, 2048), 7: (N, 128), 8: (N, 10)}
    with torch.no_grad():
        quantized_logits = qmodel(x).numpy()
        float_logits = cnn8(2)(x).numpy()  # the same weights without fake quantization
    # the hook sees the layer of the quantized model (its output before the logits' own rounding: at
    # most half a step of their scale away), not the float layer's
    step = qmodel.get_submodule("activation_post_process_9").scale.item()
    assert np.abs(feats[8] - quantized_logits).max() <= step / 2 + 1e-6
    assert not np.allclose(feats[8], float_logits, atol=1e-6)
    assert _forward_hook_count(qmodel) == hooks_before


# ----------------------------------------------------------------------------- attack, t-SNE


def test_attack_stays_in_the_pixel_ball(images, quantized):
    x, y = images
    for model in (cnn8(0), quantized[0]):  # the straight-through gradient attacks fake-quant too
        x_adv = features._attack(model, x, y, ATTACK, seed=0)
        diff = (x_adv - x).abs()
        assert diff.max() <= 0.1 + 1e-6 and diff.max() > 0.05
        assert x_adv.min() >= 0 and x_adv.max() <= 1
    half = dataclasses.replace(ATTACK, threat=ThreatModel("linf", 0.05, clamp=False))
    assert (features._attack(cnn8(0), x, y, half, seed=0) - x).abs().max() <= 0.05 + 1e-6


def test_tsne_clips_perplexity_below_the_number_of_points():
    points = np.random.default_rng(0).normal(size=(12, 5))
    xy = features.tsne_2d(points, seed=0, perplexity=30)
    assert xy.shape == (12, 2) and np.isfinite(xy).all()
    np.testing.assert_array_equal(xy, features.tsne_2d(points, seed=0, perplexity=30))


def test_select_class():
    x = torch.arange(10.0).view(10, 1, 1, 1)
    y = torch.tensor([8, 1, 8, 8, 2, 8, 0, 8, 8, 3])
    xs, ys = features.select_class(x, y, 8, max_images=3)
    assert xs.flatten().tolist() == [0.0, 2.0, 3.0] and ys.tolist() == [8, 8, 8]
    assert len(features.select_class(x, y, 8)[0]) == 6
    with pytest.raises(ValueError, match="class 5"):
        features.select_class(x, y, 5)


# ----------------------------------------------------------------------------- Figure 2


def test_figure2_embeddings_layout(embeddings, pairs):
    df = embeddings
    assert list(df.columns) == ["row", "pair", "column", "layer", "model", "condition", "sample",
                                "tsne_x", "tsne_y"]
    assert np.isfinite(df[["tsne_x", "tsne_y"]].to_numpy()).all()
    assert sorted(df["row"].unique()) == [0, 1, 2]
    assert list(df.drop_duplicates("row")["pair"]) == [
        "f_st vs f_rb", "T_st(f_st^q) vs T_ad(f_st^q)", "T_st(f_st^p) vs T_ad(f_st^p)"]
    for row, (label_a, _, label_b, _) in enumerate(pairs):
        sub = df[df["row"] == row]
        assert list(sub["column"].unique()) == ["input", "layer 6", "layer 7", "layer 8"]
        inp = sub[sub["column"] == "input"]
        # three labels in the input column: clean, attacked against A, attacked against B
        counts = inp.groupby(["model", "condition"]).size().to_dict()
        assert counts == {("", "clean"): N, (label_a, "adversarial"): N,
                          (label_b, "adversarial"): N}
        for k in (6, 7, 8):
            panel = sub[sub["layer"] == k]
            counts = panel.groupby(["model", "condition"]).size().to_dict()
            assert counts == {(m, c): N for m in (label_a, label_b)
                              for c in ("clean", "adversarial")}
            assert sorted(panel["sample"].unique()) == list(range(N))


def test_figure2_embeddings_are_deterministic(embeddings, pairs, images):
    again = features.figure2_embeddings(pairs[:1], *images, ATTACK, seed=0)
    pd.testing.assert_frame_equal(again, embeddings[embeddings["row"] == 0].reset_index(drop=True))


def test_figure2_needs_models_of_the_same_width(images):
    pair = [("f_st", cnn8(0), "pruned", cnn8(1, PRUNED_CHANNELS))]
    with pytest.raises(ValueError, match="layer 6"):
        features.figure2_embeddings(pair, *images, ATTACK, seed=0)


def test_plot_figure2_png_and_pdf(embeddings, tmp_path):
    written = plot_figure2(embeddings, tmp_path / "f2.png", tmp_path / "f2.pdf")
    assert [p.name for p in written] == ["f2.png", "f2.pdf"]
    png, pdf = (p.read_bytes() for p in written)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert pdf[:5] == b"%PDF-" and b"%%EOF" in pdf[-32:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f2.pdf", "f2.png"]
