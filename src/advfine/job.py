"""Glue for Snakemake script jobs: log to the job's log file, hand the stage its config slice."""
from __future__ import annotations

import logging
import sys
from contextlib import contextmanager


@contextmanager
def snakemake_job(smk):
    """Inside a ``script:`` job: send stdout, stderr (tqdm progress) and logging to ``smk.log[0]``,
    and yield the stage's config (its params slice plus the execution settings)."""
    log_path = smk.log[0] if smk.log else None
    stream = open(log_path, "a", buffering=1) if log_path else sys.stderr
    old_out, old_err = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        cfg = dict(smk.params.cfg) if hasattr(smk.params, "cfg") else {}
        cfg["device"] = smk.config.get("device", "auto")
        logging.getLogger("advfine").info("rule %s, wildcards %s", smk.rule, dict(smk.wildcards))
        yield cfg
    except BaseException:
        logging.getLogger("advfine").exception("job failed")
        raise
    finally:
        root.removeHandler(handler)
        sys.stdout, sys.stderr = old_out, old_err
        if log_path:
            stream.close()
