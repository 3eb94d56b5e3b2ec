"""advfine.pipeline.nodes: a node's identity, paths, wildcards, parent and labels, and the sweep's nodes."""
import shutil

import pytest

from advfine.pipeline import nodes, vocab
from advfine.pipeline.config import resolve_config
from advfine.pipeline.nodes import Node, figure2_nodes, sweep_nodes
from conftest import REPO, planned_outputs, snakemake, workflow_config, write_config

ROOT = "results/exp/fashion_mnist-cnn8/seed3/base-st"


def node(compression="dense", finetune="none", train="st") -> Node:
    return Node("exp", "fashion_mnist", "cnn8", 3, train, compression, finetune)


def test_folders_follow_the_results_layout():
    base, pruned, tuned = node(), node("prune-0.8"), node("prune-0.8", "ad")
    assert (base.folder, base.eval_folder) == (ROOT, f"{ROOT}/dense/ft-none")
    assert (pruned.folder, pruned.eval_folder) == (f"{ROOT}/prune-0.8", f"{ROOT}/prune-0.8/ft-none")
    assert tuned.folder == tuned.eval_folder == f"{ROOT}/prune-0.8/ft-ad"
    assert node("dense", "ad").folder == f"{ROOT}/dense/ft-ad"
    assert tuned.model_files() == {"model": f"{ROOT}/prune-0.8/ft-ad/model.pt",
                                   "metrics": f"{ROOT}/prune-0.8/ft-ad/metrics.json"}
    assert (tuned.eval, tuned.samples) == (f"{ROOT}/prune-0.8/ft-ad/eval.json", f"{ROOT}/prune-0.8/ft-ad/samples.csv")
    assert base.log_folder == ROOT.replace("results/", "logs/", 1)
    assert pruned.eval_log_folder == f"{ROOT.replace('results/', 'logs/', 1)}/prune-0.8/ft-none"
    assert base.data == "results/exp/data/fashion_mnist.pt"


def test_identity_method_and_level():
    assert (node().method, node().level) == ("dense", None)
    assert (node("prune-0.8").method, node("prune-0.8").level) == ("prune", 0.8)
    assert (node("ptq-int4", "st").method, node("ptq-int4", "st").level) == ("ptq", 4)
    assert (node("qat-int8", train="rb").method, node("qat-int8", train="rb").level) == ("qat", 8)


@pytest.mark.parametrize("bad, key", [({"compression": "prune-x"}, "prune-x"), ({"finetune": "pgd"}, "finetune"),
                                      ({"train": "adv"}, "train"), ({"seed": -1}, "seed"),
                                      ({"seed": "0"}, "seed"), ({"dataset": "Fashion-MNIST"}, "dataset")])
def test_a_bad_identity_is_refused_naming_the_field(bad, key):
    fields = {"experiment": "exp", "dataset": "digits", "arch": "cnn8", "seed": 0, "train": "st",
              "compression": "dense", "finetune": "none"} | bad
    with pytest.raises(ValueError, match=key):
        Node(**fields)


@pytest.mark.parametrize("compression, finetune", [("dense", "none"), ("dense", "ad"), ("prune-0.5", "none"),
                                                   ("ptq-int8", "st"), ("qat-int4", "ad"),
                                                   ("prune-0.8", "scratch-full"), ("ptq-int2", "fgsm-eqcost")])
def test_path_wildcards_and_node_round_trip(compression, finetune):
    n = node(compression, finetune, train="rb")
    assert Node.from_wildcards(n.wildcards()) == n
    assert all(isinstance(v, str) for v in n.wildcards().values())
    for path in (n.eval, n.eval_folder, n.samples):
        assert Node.from_path(path) == n
    assert Node.from_path(n.model) == (n if finetune != "none" else Node.from_path(n.folder))
    # the wildcards fill the rules' templates to the node's own paths
    assert nodes.FINETUNED_FOLDER.format(**n.wildcards()) == n.eval_folder


def test_from_wildcards_of_rules_without_compression_or_finetune():
    wc = {"experiment": "exp", "dataset": "fashion_mnist", "arch": "cnn8", "seed": "3", "train": "st"}
    assert Node.from_wildcards(wc) == node()                                        # train_base
    assert Node.from_wildcards(wc | {"compression": "prune-0.8"}) == node("prune-0.8")  # compress
    assert Node.from_wildcards(wc | {"bits": "4"}) == node("qat-int4")              # qat


def test_from_path_refuses_what_is_no_node():
    for path in ("results/exp/data/digits.pt", f"{ROOT}/prune-0.8/ft-pgd/eval.json", "logs/exp/x"):
        with pytest.raises(ValueError, match="node's path"):
            Node.from_path(path)


def test_parent_chain():
    base = node()
    assert base.parent() is None
    assert node("dense", "ad").parent() == base                                  # dense fine-tuning
    assert node("prune-0.8").parent() == base                                    # compression
    assert node("prune-0.8", "ad").parent() == node("prune-0.8")                 # compressed fine-tuning
    assert node("ptq-int8", "scratch").parent() == node("ptq-int8")              # its architecture
    assert node("qat-int4", "st").parent().parent() == base


def test_labels_in_the_papers_notation():
    assert node().label() == "f_st" and node(train="rb").math_label() == "$f_{rb}$"
    assert node("prune-0.8", train="rb").label() == "f_rb^p"
    assert node("ptq-int8", "ad").label() == "T_ad(f_st^q) (PTQ)"
    assert node("ptq-int8", "ad").label(quant_kind=False) == "T_ad(f_st^q)"
    assert node("qat-int4", "st", "rb").math_label() == r"$\mathcal{T}_{st}(f_{rb}^{q})$ (QAT)"
    assert node("prune-0.5", "scratch").label() == "S_ad^ft(arch f^p)"
    assert node("prune-0.5", "scratch").math_label() == "S_ad^ft(arch f^p)"  # outside the notation: plain
    # Figure 2 names its models by the same labels
    for name, n in figure2_nodes(workflow_config(), "tiny").items():
        assert n.label(quant_kind=False) == vocab.figure2_label(name)


def test_sweep_nodes_of_a_config():
    cfg = workflow_config()  # 2 bases, dense T_ad(f_st), prune-0.5 and ptq-int8, QAT INT8 of f_rb, 2 controls
    got = sweep_nodes(cfg)
    assert len(got) == len(set(got)) == 2 + 1 + 2 * 2 * 3 + 3 + 5 + 2
    assert got[:3] == [Node("tiny", "digits", "cnn8", 0, "st"), Node("tiny", "digits", "cnn8", 0, "st", "dense", "ad"),
                       Node("tiny", "digits", "cnn8", 0, "st", "prune-0.5", "none")]
    scratch = [n for n in got if n.finetune == "scratch"]
    assert {n.train for n in scratch} == {"st"} and {n.compression for n in scratch} == {"prune-0.5", "ptq-int8"}
    assert {n.compression for n in got if n.train == "rb"} == {"dense", "prune-0.5", "ptq-int8", "qat-int8"}
    assert not any(n.method == vocab.QAT for n in got if n.train == "st")


@pytest.mark.parametrize("configfile", [None, "configs/fmnist-cpu.yaml"])
def test_sweep_nodes_are_the_evaluations_a_dry_run_plans(tmp_path, configfile):
    """The workflow evaluates exactly the sweep's nodes, in the layout of ``Node.eval``."""
    if configfile is None:
        shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
        cfg = resolve_config([], {}, REPO, default=tmp_path / "config.yaml")
        args = ()
    else:
        cfg = resolve_config([REPO / configfile], {}, REPO)
        args = ("--configfile", str(REPO / configfile))
    result = snakemake(tmp_path, "all", "-n", *args, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    planned = [p for o in planned_outputs(result) for p in o.split(", ") if p.endswith("/eval.json")]
    expected = [n.eval for n in sweep_nodes(cfg)]
    assert len(expected) == len(set(expected)) and sorted(planned) == sorted(expected)
    assert [Node.from_path(p) for p in expected] == sweep_nodes(cfg)


def test_the_tiny_workflow_plans_every_checkpoint_in_its_nodes_folder(tmp_path):
    """Each model rule writes the checkpoint of the node its wildcards name, and reads its parent's."""
    write_config(tmp_path, workflow_config())
    result = snakemake(tmp_path, "all", "-n", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    models = {p for o in planned_outputs(result) for p in o.split(", ") if p.endswith("/model.pt")}
    needed = set()
    for n in sweep_nodes(workflow_config()):
        chain = n
        while chain is not None:
            needed.add(chain.model)
            chain = chain.parent()
    assert models == needed
