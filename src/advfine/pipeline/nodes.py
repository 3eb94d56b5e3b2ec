"""A node of the workflow's DAG: one model of the sweep, by its identity, and where its files live.

A node is (experiment, dataset, arch, seed, base model, compression, fine-tuning). Its path, its Snakemake
wildcards, its parent and its labels all come from ``Node``; the path templates below are the only
spelling of the results layout, and the rules build their output patterns from them.

Pure Python, no torch or pandas: the Snakefile imports it at parse time.

Layout (every wildcard visible, so a user can ``ls`` a result and know what it is)::

    results/<experiment>/data/<dataset>.pt                              the prepared data
    results/<experiment>/<dataset>-<arch>/seed<seed>/base-<train>/      base model (dense, ft-none)
        <compression>/                                                  compressed model (ft-none)
        <compression>/ft-<finetune>/                                    fine-tuned model
        <compression>/ft-<finetune>/eval.json, samples.csv              every node's evaluation
    logs/...                                                            the same folders, one log per stage
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from advfine.pipeline.vocab import (BASE_MODELS, CONTROLS, DENSE, FIGURE2_MODELS, FINETUNE_MODES, PRUNE, PTQ, QAT,
                                    SAMPLES, SCRATCH_CONTROLS, WILDCARDS, compression_label, math_model_label,
                                    model_label, parse_compression)

NO_FINETUNING = "none"
DENSE_FINETUNE_BASE = "st"  # sweep.dense_finetune fine-tunes the dense f_st only (Table 2's T_ad(f_st))

# ------------------------------------------------------------------------------ path templates
DATA = "results/{experiment}/data/{dataset}.pt"
_BASE = "{experiment}/{dataset}-{arch}/seed{seed}/base-{train}"
BASE_FOLDER = f"results/{_BASE}"                          # the base model: dense, no fine-tuning
COMPRESSED_FOLDER = f"{BASE_FOLDER}/{{compression}}"      # a compressed model, no fine-tuning
FINETUNED_FOLDER = f"{COMPRESSED_FOLDER}/ft-{{finetune}}"  # a fine-tuned model; every node's evaluation
QAT_FOLDER = f"{BASE_FOLDER}/{QAT}-int{{bits}}"            # the qat rule's output: wildcard bits
BASE_LOGS = f"logs/{_BASE}"
COMPRESSED_LOGS = f"{BASE_LOGS}/{{compression}}"
FINETUNED_LOGS = f"{COMPRESSED_LOGS}/ft-{{finetune}}"
QAT_LOGS = f"{BASE_LOGS}/{QAT}-int{{bits}}"

MODEL = "model.pt"
METRICS = "metrics.json"
EVAL = "eval.json"

_IDENTITY = ("experiment", "dataset", "arch", "seed", "train", "compression", "finetune")
_PATH_RE = re.compile(
    rf"^results/(?P<experiment>{WILDCARDS['experiment']})/(?P<dataset>{WILDCARDS['dataset']})"
    rf"-(?P<arch>{WILDCARDS['arch']})/seed(?P<seed>{WILDCARDS['seed']})/base-(?P<train>{WILDCARDS['train']})"
    rf"(?:/(?P<compression>{WILDCARDS['compression']})(?:/ft-(?P<finetune>{WILDCARDS['finetune']}))?)?"
    r"(?:/(?P<file>[^/]+\.[a-z]+))?/?$")


@dataclass(frozen=True)
class Node:
    """One model of the sweep. ``compression`` is a compression label (``dense``, ``prune-0.8``,
    ``ptq-int8``, ``qat-int4``), ``finetune`` a fine-tuning mode or control arm (``none``, ``st``, ``ad``,
    ``fgsm``...); the base model is (``dense``, ``none``)."""

    experiment: str
    dataset: str
    arch: str
    seed: int
    train: str
    compression: str = DENSE
    finetune: str = NO_FINETUNING

    def __post_init__(self):
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"node seed {self.seed!r}: expected an integer >= 0")
        for key in ("experiment", "dataset", "arch"):
            if not isinstance(getattr(self, key), str) or not re.fullmatch(WILDCARDS[key], getattr(self, key)):
                raise ValueError(f"node {key} {getattr(self, key)!r}: expected a match of {WILDCARDS[key]}")
        if self.train not in BASE_MODELS:
            raise ValueError(f"node train {self.train!r}: expected one of {list(BASE_MODELS)}")
        if self.finetune not in FINETUNE_MODES and self.finetune not in CONTROLS:
            raise ValueError(f"node finetune {self.finetune!r}: expected one of {[*FINETUNE_MODES, *CONTROLS]}")
        parse_compression(self.compression)  # raises ValueError naming the label

    # -------------------------------------------------------------------------- identity
    @property
    def method(self) -> str:
        """The compression method: dense, prune, ptq or qat."""
        return parse_compression(self.compression)[0]

    @property
    def level(self) -> float | int | None:
        """The sparsity of a pruned node, the bit width of a quantized one, None for a dense one."""
        return parse_compression(self.compression)[1]

    def parent(self) -> Node | None:
        """The node whose checkpoint this one starts from: the compressed node for a fine-tuning of a
        compressed model (a from-scratch control takes its architecture), the base for a compression or a
        fine-tuning of the dense model, None for the base."""
        if self.finetune != NO_FINETUNING and self.compression != DENSE:
            return replace(self, finetune=NO_FINETUNING)
        if self.finetune != NO_FINETUNING or self.compression != DENSE:
            return replace(self, compression=DENSE, finetune=NO_FINETUNING)
        return None

    # -------------------------------------------------------------------------- Snakemake wildcards
    def wildcards(self) -> dict[str, str]:
        """The node's wildcards, as Snakemake gives them (strings)."""
        return {k: str(getattr(self, k)) for k in _IDENTITY}

    @classmethod
    def from_wildcards(cls, wildcards) -> Node:
        """The node of a job's wildcards (a Snakemake ``Wildcards`` or a mapping). A rule without
        ``compression`` makes the base model's folder (dense); the qat rule's ``bits`` name a QAT
        compression; without ``finetune`` the node is not fine-tuned."""
        wc = dict(wildcards.items())
        if "compression" in wc:
            compression = wc["compression"]
        elif "bits" in wc:
            compression = compression_label(QAT, int(wc["bits"]))
        else:
            compression = DENSE
        return cls(experiment=wc["experiment"], dataset=wc["dataset"], arch=wc["arch"], seed=int(wc["seed"]),
                   train=wc["train"], compression=compression, finetune=wc.get("finetune", NO_FINETUNING))

    @classmethod
    def from_path(cls, path) -> Node:
        """The node of a folder or file under ``results/`` (a checkpoint's folder, an evaluation folder or
        a file in either): ``.../base-st/prune-0.8/ft-ad/eval.json`` -> (st, prune-0.8, ad)."""
        m = _PATH_RE.match(str(path).replace("\\", "/"))
        if not m:
            raise ValueError(f"{path!r} is not a node's path ({FINETUNED_FOLDER})")
        wc = {k: v for k, v in m.groupdict().items() if v is not None and k != "file"}
        return cls.from_wildcards(wc)

    # -------------------------------------------------------------------------- paths
    @property
    def folder(self) -> str:
        """The folder of the node's checkpoint (model.pt, metrics.json)."""
        return _folder(self, BASE_FOLDER, COMPRESSED_FOLDER, FINETUNED_FOLDER)

    @property
    def log_folder(self) -> str:
        """The folder of the log of the stage that makes the node's checkpoint."""
        return _folder(self, BASE_LOGS, COMPRESSED_LOGS, FINETUNED_LOGS)

    @property
    def eval_folder(self) -> str:
        """The folder of the node's evaluation (eval.json, samples.csv): ``<compression>/ft-<finetune>`` for
        every node, the base model's included (``dense/ft-none``)."""
        return FINETUNED_FOLDER.format(**self.wildcards())

    @property
    def eval_log_folder(self) -> str:
        return FINETUNED_LOGS.format(**self.wildcards())

    @property
    def model(self) -> str:
        return f"{self.folder}/{MODEL}"

    @property
    def metrics(self) -> str:
        return f"{self.folder}/{METRICS}"

    @property
    def eval(self) -> str:
        return f"{self.eval_folder}/{EVAL}"

    @property
    def samples(self) -> str:
        return f"{self.eval_folder}/{SAMPLES}"

    @property
    def data(self) -> str:
        """The prepared data the node's jobs read."""
        return DATA.format(experiment=self.experiment, dataset=self.dataset)

    def model_files(self) -> dict[str, str]:
        """The checkpoint's files by the names the stage scripts read (``input.model``, ``input.metrics``)."""
        return {"model": self.model, "metrics": self.metrics}

    # -------------------------------------------------------------------------- the paper's notation
    def label(self, quant_kind: bool = True) -> str:
        """Plain-text label in the paper's notation: ``T_ad(f_st^q) (PTQ)``; without ``quant_kind`` no
        " (PTQ)"/" (QAT)" suffix (Figure 2's panels)."""
        return model_label(self.train, self.method, self.finetune, quant_kind=quant_kind)

    def math_label(self) -> str:
        """The figures' label, the paper's notation as mathtext: ``$\\mathcal{T}_{ad}(f_{st}^{q})$ (PTQ)``."""
        return math_model_label(self.train, self.method, self.finetune)


def _folder(node: Node, base: str, compressed: str, finetuned: str) -> str:
    if node.finetune != NO_FINETUNING:
        template = finetuned
    elif node.compression != DENSE:
        template = compressed
    else:
        template = base
    return template.format(**node.wildcards())


# ------------------------------------------------------------------------------ the sweep
def compression_labels(sweep: dict, train: str) -> list[str]:
    """The compressed nodes under base model ``train``; QAT only under sweep.qat_base_models."""
    labels = [compression_label(PRUNE, s) for s in sweep["prune_sparsities"]]
    labels += [compression_label(PTQ, b) for b in sweep["ptq_bits"]]
    if train in sweep["qat_base_models"]:
        labels += [compression_label(QAT, b) for b in sweep["qat_bits"]]
    return labels


def controls_under(sweep: dict, train: str) -> list[str]:
    """The control arms (sweep.controls) under base model ``train``, if it is in sweep.control_base_models:
    the from-scratch ones only under the first of those (they use its compressed architecture, never its
    weights)."""
    bases = [b for b in sweep["base_models"] if b in sweep["control_base_models"]]
    if train not in bases:
        return []
    return [c for c in sweep["controls"] if train == bases[0] or c not in SCRATCH_CONTROLS]


def sweep_nodes(config: dict) -> list[Node]:
    """Every evaluated node of the sweep of a resolved ``config``, per seed and base model: the dense base,
    its fine-tunings (sweep.dense_finetune, under f_st), then each compressed model under each fine-tuning
    (sweep.finetune) and control arm."""
    sweep = config["sweep"]
    nodes = []
    for seed in sweep["seeds"]:
        for train in sweep["base_models"]:
            base = Node(config["experiment"], config["data"]["name"], config["model"]["arch"], int(seed), train)
            nodes.append(base)
            if train == DENSE_FINETUNE_BASE:
                nodes += [replace(base, finetune=ft) for ft in sweep["dense_finetune"]]
            for compression in compression_labels(sweep, train):
                nodes += [replace(base, compression=compression, finetune=ft)
                          for ft in sweep["finetune"] + controls_under(sweep, train)]
    return nodes


def figure2_nodes(config: dict, experiment: str) -> dict[str, Node]:
    """Figure 2's models (``vocab.FIGURE2_MODELS``) by name: first seed, the report's compression levels."""
    levels = {DENSE: DENSE, PRUNE: compression_label(PRUNE, config["report"]["prune_sparsity"]),
              PTQ: compression_label(PTQ, config["report"]["ptq_bits"])}
    return {name: Node(experiment, config["data"]["name"], config["model"]["arch"], int(config["sweep"]["seeds"][0]),
                       train, levels[method], finetune)
            for name, (train, method, finetune) in FIGURE2_MODELS.items()}
