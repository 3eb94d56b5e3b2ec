"""Stage prepare_data: load, split and scale the dataset once into one tensor file that every other
job reads in milliseconds."""
from __future__ import annotations

import logging
import time

from advfine.core.data import save_prepared
from advfine.core.datasets import load_dataset

log = logging.getLogger("advfine")


def run(config: dict, *, out_data: str) -> dict:
    """Load the dataset of ``config['data']`` (split, scaling, subsets) and write it to ``out_data``."""
    start = time.perf_counter()
    data = load_dataset(config["data"])
    save_prepared(data, out_data)
    info = {"name": data.name, "n_train": len(data.train_y), "n_test": len(data.test_y),
            "shape": list(data.train_x.shape[1:]), "wall_time_s": time.perf_counter() - start}
    log.info("prepared %s", info)
    return info
