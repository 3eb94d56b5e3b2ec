"""The workflow's stages, one module per Snakemake rule of the same name (``advfine.stages.compress``
is rule ``compress``, script ``workflow/scripts/compress.py``, config slice ``compress``, log
``compress.log``). Each module has one ``run(config, *, ...)``: it reads its inputs, does the work
through the package's domain modules, and writes its checkpoint and metrics JSON."""
