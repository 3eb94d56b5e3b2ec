"""Figure 2: t-SNE of inputs and intermediate features, clean vs PGD-attacked (paper Sec. 6,
"Robust and non-robust features after compression", and Appendix A.2).

    x, y = select_class(test_x, test_y, 8, max_images=200)   # Fashion-MNIST "bag", as in the paper
    pairs = [("f_st", f_st, "f_rb", f_rb),
             ("T_st(f_st^q)", t_st_q, "T_ad(f_st^q)", t_ad_q),
             ("T_st(f_st^p)", t_st_p, "T_ad(f_st^p)", t_ad_p)]
    df = figure2_embeddings(pairs, x, y, PGDAttack(ThreatModel("linf", 0.1), step_size=0.01, steps=20), seed=0)
    plot_figure2(df, "figure2_tsne.png", "figure2_tsne.pdf")   # advfine.report.figure2

One figure row per model pair (A, B), four columns:

* ``input``: the flattened images, clean and PGD-attacked against A and against B (three labels,
  as in Appendix A.2);
* ``layer 6``, ``layer 7``, ``layer 8``: the flattened outputs of those layers of the CNN8
  (``models.layer_outputs``), for each model on clean images and on the images attacked against
  that model (white-box): four labels.

Each panel is one joint t-SNE embedding (scikit-learn, perplexity 30 clipped below the number of
points, learning rate "auto", PCA init, ``random_state=seed``) of all its points, so both models
of a pair share the panel's coordinates; their layer outputs must have the same size.

Layer outputs are read with forward hooks. On fake-quantized models (``quantize.quantize_ptq``)
each ReLU is fused into its conv/linear, whose inputs and weights are already rounded: a hook on
it sees the quantized model's features (before that layer's own output rounding).
"""
from __future__ import annotations


import numpy as np
import pandas as pd
import torch
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits
from torch import nn

from advfine.core.attacks.pgd import PGDAttack
from advfine.core.models import layer_outputs

FIGURE2_LAYERS = (6, 7, 8)  # the paper's "last three hidden layers"
COLUMNS = ["input"] + [f"layer {k}" for k in FIGURE2_LAYERS]


def select_class(x: torch.Tensor, y: torch.Tensor, label: int, max_images: int | None = None,
                 min_images: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``max_images`` (default: all) images of class ``label``, in dataset order; a ValueError
    when there are fewer than ``min_images``."""
    idx = (y == label).nonzero().flatten()
    if max_images is not None:
        idx = idx[:max_images]
    if len(idx) < min_images:
        raise ValueError(f"{len(idx)} images of class {label}, fewer than {min_images}")
    return x[idx], y[idx]


def layer_features(model: nn.Module, x: torch.Tensor,
                   layers: tuple[int, ...] = FIGURE2_LAYERS) -> dict[int, np.ndarray]:
    """{layer number (1..8): its output for every image, flattened to (n, features)}, read with
    forward hooks on the modules ``models.layer_outputs(model)`` names. The model runs in eval
    mode without gradients; its mode is restored and the hooks removed afterwards."""
    names = layer_outputs(model)
    outputs: dict[int, torch.Tensor] = {}

    def keep(number):
        def hook(module, inputs, output):
            outputs[number] = output.detach().flatten(1).cpu()
        return hook

    handles = [model.get_submodule(names[k - 1]).register_forward_hook(keep(k)) for k in layers]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x.to(_device_of(model)))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {k: outputs[k].numpy() for k in layers}


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: PGDAttack,
            seed: int) -> torch.Tensor:
    device = _device_of(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    return attack(model, x.to(device), y.to(device), generator=generator).cpu()


def tsne_2d(points: np.ndarray, seed: int, perplexity: float = 30.0,
            max_iter: int = 500) -> np.ndarray:
    """Two-dimensional t-SNE (Appendix A.2: perplexity 30, learning rate "auto"; PCA init and a
    fixed ``random_state`` make it deterministic). scikit-learn needs perplexity < n points."""
    perplexity = min(float(perplexity), len(points) - 1.0)
    tsne = TSNE(n_components=2, perplexity=perplexity, learning_rate="auto", init="pca",
                random_state=seed, max_iter=max_iter)
    # The Barnes-Hut gradient runs on OpenMP threads; keep it to the job's torch thread budget
    # (on a busy shared CPU, two OpenMP threads were twice as slow as one).
    with threadpool_limits(limits=torch.get_num_threads(), user_api="openmp"):
        return tsne.fit_transform(points.astype(np.float32))


def figure2_embeddings(pairs: list[tuple[str, nn.Module, str, nn.Module]], x: torch.Tensor,
                       y: torch.Tensor, attack: PGDAttack, seed: int,
                       perplexity: float = 30.0) -> pd.DataFrame:
    """t-SNE coordinates of every point of Figure 2.

    ``pairs``: (label A, model A, label B, model B) per figure row; ``x``/``y``: images in [0, 1]
    (one class) and their labels; ``attack``: the PGD attack (the evaluation's). Each model is attacked
    once (PGD with a generator seeded from ``seed``, row and position in the pair); the same
    adversarial images serve the input column and that model's layer columns.

    Returns one row per point with columns: ``row`` (pair index), ``pair`` ("A vs B"),
    ``column`` ("input", "layer 6", ...), ``layer`` (0 for the input), ``model`` (input column:
    the model the attack was crafted against, "" for clean images; layer columns: the model whose
    features these are), ``condition`` ("clean"/"adversarial"), ``sample`` (index into ``x``),
    ``tsne_x``, ``tsne_y``."""
    x, y = x.detach().cpu(), y.detach().cpu()
    n = len(x)
    samples = np.arange(n)
    frames = []
    for row, (label_a, model_a, label_b, model_b) in enumerate(pairs):
        pair = f"{label_a} vs {label_b}"
        models = [(label_a, model_a), (label_b, model_b)]
        x_adv = {label: _attack(model, x, y, attack, seed + 1000 * row + j)
                 for j, (label, model) in enumerate(models)}

        # Column 1: the images themselves: clean, attacked against A, attacked against B.
        parts = [("", "clean", x)] + [(label, "adversarial", x_adv[label]) for label, _ in models]
        points = np.concatenate([images.flatten(1).numpy() for _, _, images in parts])
        frames.append(_frame(row, pair, "input", 0, parts, samples, tsne_2d(points, seed, perplexity)))

        # Columns 2-4: each model's layer outputs on clean images and on its own attack.
        clean = {label: layer_features(model, x) for label, model in models}
        attacked = {label: layer_features(model, x_adv[label]) for label, model in models}
        for k in FIGURE2_LAYERS:
            parts = [(label, cond, feats[label][k]) for label, _ in models
                     for cond, feats in (("clean", clean), ("adversarial", attacked))]
            sizes = {label: feats.shape[1] for label, _, feats in parts}
            if len(set(sizes.values())) != 1:
                raise ValueError(f"figure 2 row {row} ({pair}): layer {k} outputs differ in size "
                                 f"{sizes}; a joint t-SNE needs models of the same width")
            points = np.concatenate([feats for _, _, feats in parts])
            frames.append(_frame(row, pair, f"layer {k}", k, parts, samples,
                                 tsne_2d(points, seed, perplexity)))
    columns = ["row", "pair", "column", "layer", "model", "condition", "sample", "tsne_x", "tsne_y"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def _frame(row: int, pair: str, column: str, layer: int, parts: list, samples: np.ndarray,
           xy: np.ndarray) -> pd.DataFrame:
    """The points of one panel; ``parts`` are (model, condition, values) in embedding order."""
    n = len(samples)
    return pd.DataFrame({
        "row": row, "pair": pair, "column": column, "layer": layer,
        "model": np.repeat([m for m, _, _ in parts], n),
        "condition": np.repeat([c for _, c, _ in parts], n),
        "sample": np.tile(samples, len(parts)),
        "tsne_x": xy[:, 0], "tsne_y": xy[:, 1],
    })
