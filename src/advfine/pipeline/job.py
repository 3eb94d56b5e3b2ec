"""Glue for Snakemake script jobs: log to the job's log file, hand the stage its config slice with the
device it runs on (a GPU of its own from the pool when the rule asks for one), its seed and threads."""
from __future__ import annotations

import logging
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from advfine.core.runtime import peak_rss_mb
from advfine.pipeline.gpu_pool import job_device


@dataclass(frozen=True)
class Job:
    config: dict       # the rule's config slice (params.cfg) plus ``device``
    seed: int | None   # the node's seed (wildcard ``seed``), None for rules without one
    threads: int


@contextmanager
def snakemake_job(smk):
    """Inside a ``script:`` job: send stdout, stderr (tqdm progress) and logging to ``smk.log[0]``, and
    yield the ``Job``. A rule declaring ``resources: gpu`` gets a concrete device (``gpu_pool.job_device``):
    its own GPU (``cuda:N``) from the pool when CUDA is there, else the config's ``device`` resolved (``cpu``,
    ``mps``, ``cuda:N``). A rule without it keeps the config's ``device`` as written, possibly ``auto``:
    the light rules use no device, and a model stage resolves it when it starts (``runtime.resolve_device``,
    which takes a concrete name as well), so a node whose CUDA is broken fails only the jobs that use it."""
    start = time.perf_counter()
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
        with ExitStack() as stack:
            device = smk.config["device"]
            if int(getattr(smk.resources, "gpu", 0) or 0) > 0:
                device = stack.enter_context(job_device(device))
            wildcards = dict(smk.wildcards)
            seed = int(wildcards["seed"]) if "seed" in wildcards else None
            logging.getLogger("advfine").info("rule %s, wildcards %s, device %s", smk.rule, wildcards, device)
            yield Job(config=dict(smk.params.cfg) | {"device": device}, seed=seed, threads=int(smk.threads))
    except BaseException:
        logging.getLogger("advfine").exception("job failed")
        raise
    finally:
        # one line per job that benchmarks/workflow_overhead.py reads back (memory table, run overhead):
        # in_process_s is the job's time inside Python after its imports
        logging.getLogger("advfine").info("rule %s: peak_rss_mb=%.1f in_process_s=%.2f", smk.rule, peak_rss_mb(),
                                          time.perf_counter() - start)
        root.removeHandler(handler)
        sys.stdout, sys.stderr = old_out, old_err
        if log_path:
            stream.close()
