"""Each stage's config slice (advfine.pipeline.config.STAGE_SECTIONS, its Snakemake params) is exactly what it reads:
every stage function runs on tiny digits with its slice as a dict that records each key read from it,
over the cases that read different keys (base models, compression methods, fine-tuning modes, QAT inits)."""
from __future__ import annotations

import pytest

from advfine.pipeline import vocab
from advfine.pipeline.config import STAGE_SECTIONS, stage_config
from advfine.stages import (aggregate, compress, deployment, evaluate, figure2, finetune, plot, prepare_data, qat,
                            train_base)

from conftest import tiny_config

QAT = {"init": "parent", "epochs": 1, "batch_size": 32, "lr": 0.01, "momentum": 0.9, "lr_drop_epoch": None,
       "lr_after_drop": 0.01}
# one config for every case: QAT in the sweep (its section present), the tiny suite, Figure 2 on few images
OVER = {"train.epochs": 1, "train.lr_drop_epoch": None, "sweep.qat_bits": [8], "qat": QAT,
        "finetune.qat": {"lr": 0.01, "momentum": 0.9}, "figure2": {"enabled": True, "n_images": 10, "perplexity": 3},
        "deployment": {"rounds": 1, "warmup": 1, "batch_size": 8}}
# read by the job glue for every stage (advfine.pipeline.job adds it to the slice): a workflow key, not a stage's
WORKFLOW_READS = {("device",)}


class ReadRecorder(dict):
    """A config (slice) that adds the path of every key read from it, at any depth, to ``reads``. Only
    reads count (``[key]`` and ``get``): iterating it, e.g. to hash it for provenance, reads no setting."""

    def __init__(self, values=(), reads: set | None = None, path: tuple = ()):
        super().__init__({key: ReadRecorder(value, reads, path + (key,)) if isinstance(value, dict) else value
                          for key, value in dict(values).items()})
        self.reads, self.path = reads, path

    def __getitem__(self, key):
        self.reads.add(self.path + (key,))
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.reads.add(self.path + (key,))
        return super().get(key, default)


READS: dict[str, set] = {stage: set() for stage in vocab.STAGES}


def settings(stage: str) -> ReadRecorder:
    """What the workflow hands ``stage``: its slice of the tiny config, with the device (as advfine.pipeline.job)."""
    return ReadRecorder(stage_config(tiny_config(**OVER), stage) | {"device": "cpu"}, READS[stage])


def model_files(folder):
    return {"model": folder / "model.pt", "metrics": folder / "metrics.json"}


@pytest.fixture(scope="module")
def every_stage_ran(tmp_path_factory):
    """Every stage over the cases whose reads differ; the reads recorded in READS."""
    root = tmp_path_factory.mktemp("slices")
    data = root / "digits.pt"
    prepare_data.run(settings("prepare_data"), out_data=data)
    bases = {}
    for train in ("st", "rb"):
        bases[train] = root / f"base-{train}"
        train_base.run(settings("train_base"), data=data, train=train, seed=0,
                       out_model=bases[train] / "model.pt", out_metrics=bases[train] / "metrics.json")
    nodes = {}
    for label in ("prune-0.5", "ptq-int8"):
        nodes[label] = root / label
        compress.run(settings("compress"), data=data, compression=label, seed=0, **model_files(bases["st"]),
                     out_model=nodes[label] / "model.pt", out_metrics=nodes[label] / "metrics.json")
    for train, init in (("rb", "parent"), ("st", "scratch")):
        out = root / f"qat-{train}"
        parent = model_files(bases[train]) if init == "parent" else {}
        qat_settings = settings("qat")
        qat_settings["qat"]["init"] = init
        qat.run(qat_settings, data=data, bits=8, train=train, seed=0, out_model=out / "model.pt",
                out_metrics=out / "metrics.json", **parent)
    tuned = {}
    for label, mode in (("dense", "st"), ("prune-0.5", "ad"), ("ptq-int8", "fgsm-eqcost"), ("ptq-int8", "scratch"),
                        ("prune-0.5", "scratch-full"), ("prune-0.5", "st"), ("ptq-int8", "st"), ("ptq-int8", "ad")):
        out = tuned[label, mode] = root / f"{label}-ft-{mode}"
        start = bases["st"] if label == "dense" else nodes[label]
        finetune.run(settings("finetune"), data=data, compression=label, mode=mode, seed=0, **model_files(start),
                     out_model=out / "model.pt", out_metrics=out / "metrics.json")
    evals, models = [], []
    for label, folder, curve in (("dense", bases["st"], True), ("ptq-int8", nodes["ptq-int8"], False)):
        out = root / f"eval-{label}"
        evaluate.run(settings("evaluate"), data=data, experiment="tiny", train="st", compression=label,
                     finetune="none", seed=0, **model_files(folder), out_eval=out / "eval.json",
                     out_samples=out / vocab.SAMPLES, curve=curve)
        evals.append(str(out / "eval.json"))
        models.append(str(folder / "model.pt"))
    deployment.run(settings("deployment"), data=data, evals=evals, models=models, out_json=root / "deployment.json",
                   out_csv=root / "deployment.csv")
    aggregate.run(settings("aggregate"), evals=evals, deployment=root / "deployment.json",
                  out_csv=root / "all_metrics.csv", out_tables_dir=root / "tables")
    plot.run(settings("plot"), metrics_csv=root / "all_metrics.csv", out_dir=root / "figures",
             figures=vocab.plot_figure_names(with_qat=False))
    models = {"f_st": bases["st"], "f_rb": bases["rb"], "T_st_f_st_q": tuned["ptq-int8", "st"],
              "T_ad_f_st_q": tuned["ptq-int8", "ad"], "T_st_f_st_p": tuned["prune-0.5", "st"],
              "T_ad_f_st_p": tuned["prune-0.5", "ad"]}
    figure2.run(settings("figure2"), data=data, models={name: str(models[name] / "model.pt") for name in models},
                seed=0, out_png=root / "f2.png", out_pdf=root / "f2.pdf", out_embeddings=root / "f2.csv")
    return READS


def slice_paths(stage: str) -> set[tuple]:
    return {tuple(dotted.split(".")) for dotted in STAGE_SECTIONS[stage]}


@pytest.mark.slow
@pytest.mark.parametrize("stage", vocab.STAGES)
def test_a_stage_reads_nothing_outside_its_slice(every_stage_ran, stage):
    """(A key outside the slice would also fail the stage: the workflow hands it the slice alone.)"""
    reads = every_stage_ran[stage] - WORKFLOW_READS
    sections = slice_paths(stage)
    outside = {".".join(read) for read in reads
               if not any(read[:len(s)] == s or s[:len(read)] == read for s in sections)}
    assert outside == set()




@pytest.mark.slow
@pytest.mark.parametrize("stage", vocab.STAGES)
def test_every_key_of_a_stages_slice_is_read(every_stage_ran, stage):
    """(A key the stage never reads would rerun it whenever that key changes, for nothing.)"""
    reads = every_stage_ran[stage]
    unread = {".".join(s) for s in slice_paths(stage) if not any(read[:len(s)] == s for read in reads)}
    assert unread == set()
