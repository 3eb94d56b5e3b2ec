"""The pipeline: the config and its schema, the workflow's vocabulary, the nodes of the DAG and their
records on disk, code fingerprints, the GPU pool and provenance. It builds on ``advfine.core`` and imports
nothing from ``advfine.report`` or ``advfine.stages`` (tests/test_package.py)."""
