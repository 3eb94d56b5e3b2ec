"""The core: pure torch. Threat models and attacks, the evaluation suite and its audit, models, compression
(pruning, quantization, INT1), training and its objectives, training health, data tensors, cost, devices.
It knows no Snakemake, no stage and no results layout (settings arrive as objects, or as the config
section a type is built from, e.g. ``ThreatModel.from_config``), and imports nothing from ``advfine.pipeline``
or ``advfine.report`` (tests/test_package.py)."""
