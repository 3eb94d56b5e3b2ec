"""Stage figure2: the paper's Figure 2, a t-SNE of the inputs and of layers 6-8, clean and PGD-attacked,
for test images of one class, for three model pairs; the embeddings are also written as CSV."""
from __future__ import annotations

import logging

from advfine.core.data import load_prepared
from advfine.core.features import figure2_embeddings, select_class
from advfine.core.files import atomic_path
from advfine.pipeline.checkpoints import load_model
from advfine.pipeline.vocab import FIGURE2_MODELS, FIGURE2_PAIRS, figure2_label, stage_seed
from advfine.report.figure2 import plot_figure2
from advfine.stages.common import attack_from_config, setup

log = logging.getLogger("advfine")


def run(config: dict, *, data: str, models: dict[str, str], seed: int, out_png: str, out_pdf: str,
        out_embeddings: str, threads: int = 1) -> None:
    """``models`` maps each name of ``vocab.FIGURE2_MODELS`` to its checkpoint (first seed, the report's
    compression levels); the settings are the config's ``figure2`` section."""
    device = setup(config, seed, threads)
    dataset = load_prepared(data)
    settings = config["figure2"]
    label = settings["class_index"]
    try:
        x, y = select_class(dataset.test_x, dataset.test_y, label, settings["n_images"], min_images=2)
    except ValueError as err:
        raise ValueError(f"config key figure2.class_index: the test set has {err}; t-SNE needs several") from None
    loaded = {name: load_model(models[name])[0].to(device).eval() for name in FIGURE2_MODELS}
    pairs = [(figure2_label(a), loaded[a], figure2_label(b), loaded[b]) for a, b in FIGURE2_PAIRS]
    attack = attack_from_config(config, "eval")
    log.info("figure 2: %d test images of class %d, %s", len(x), label, attack.describe())
    df = figure2_embeddings(pairs, x, y, attack,
                            stage_seed("figure2", seed), settings["perplexity"])
    with atomic_path(out_embeddings) as tmp:
        df.to_csv(tmp, index=False)
    plot_figure2(df, out_png, out_pdf)
