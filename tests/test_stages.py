"""The stage functions end to end on tiny digits: train -> compress -> fine-tune -> evaluate."""
import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from advfine.pipeline import vocab
from advfine.pipeline.checkpoints import load_model, save_model
from advfine.pipeline.vocab import compression_label, parse_compression
from advfine.report.paired import read_outcome
from advfine.stages import compress as compress_stage
from advfine.stages import deployment as deployment_stage
from advfine.stages import evaluate as evaluate_stage
from advfine.stages import finetune as finetune_stage
from advfine.stages import prepare_data, qat as qat_stage, train_base

from conftest import FIXTURE_TRAIN_CONFIG, stage_settings


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "digits.pt"
    info = prepare_data.run(stage_settings("prepare_data"), out_data=path)
    assert info["n_train"] == 512 and info["n_test"] == 128 and info["shape"] == [1, 28, 28]
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory, data_path):
    """A standard base model trained by the stage function (3 epochs on 512 digits)."""
    d = tmp_path_factory.mktemp("base")
    train_base.run(stage_settings("train_base", **FIXTURE_TRAIN_CONFIG, **{"train.epochs": 3}), data=data_path,
                   train="st", seed=0, out_model=d / "model.pt", out_metrics=d / "metrics.json")
    return d


def written(path) -> dict:
    """The JSON a stage wrote (its metrics.json or eval.json)."""
    return json.loads(Path(path).read_text())


def compress(data_path, base, out, compression, **over):
    compress_stage.run(stage_settings("compress", **over), data=data_path, compression=compression, seed=0,
                       model=base / "model.pt", metrics=base / "metrics.json",
                       out_model=out / f"{compression}.pt", out_metrics=out / f"{compression}.json")
    return written(out / f"{compression}.json")


def finetune(data_path, out, compression, mode, **over):
    finetune_stage.run(stage_settings("finetune", **over), data=data_path, compression=compression,
                       mode=mode, seed=0, model=out / f"{compression}.pt", metrics=out / f"{compression}.json",
                       out_model=out / "ft.pt", out_metrics=out / "ft.json")
    return written(out / "ft.json")


def evaluate(data_path, model, metrics, compression="dense", finetune="none", curve=False, **over):
    out = Path(model).parent / f"eval-{compression}-{finetune}.json"
    evaluate_stage.run(stage_settings("evaluate", **over), data=data_path, experiment="tiny", train="st",
                       compression=compression, finetune=finetune, seed=0, model=model, metrics=metrics,
                       out_eval=out, out_samples=out.with_suffix(".csv"), curve=curve)
    return written(out)


def test_train_base_writes_checkpoint_and_metrics(base):
    metrics = json.loads((base / "metrics.json").read_text())
    assert metrics["stage"] == "train_base" and len(metrics["history"]) == 3
    assert metrics["stages"][0]["stage"] == "train_base" and metrics["stages"][0]["wall_time_s"] > 0
    prov = metrics["provenance"]
    assert prov["device"] == "cpu" and prov["seed"] == 0 and len(prov["config_hash"]) == 16
    assert prov["versions"]["torch"] and prov["versions"]["nni"] == "3.0"
    model, ckpt = load_model(base / "model.pt")
    assert ckpt["arch"]["conv_channels"] == [32, 32, 64, 64, 128, 128]


def test_ptq_int8_without_finetuning_keeps_the_parent_accuracy(data_path, base, tmp_path):
    before = sha(base / "model.pt")
    compress(data_path, base, tmp_path, "ptq-int8")
    assert sha(base / "model.pt") == before  # compression never touches its parent
    dense = evaluate(data_path, base / "model.pt", base / "metrics.json", **{"attack.eval.steps": 0})
    quant = evaluate(data_path, tmp_path / "ptq-int8.pt", tmp_path / "ptq-int8.json", "ptq-int8",
                     **{"attack.eval.steps": 0})
    assert dense["clean_acc"] > 0.7
    assert abs(quant["clean_acc"] - dense["clean_acc"]) <= 0.01
    assert quant["weight_bytes"] < dense["weight_bytes"] / 3
    assert quant["robust_acc"] <= quant["robust_acc_whitebox"] <= quant["clean_acc"]
    assert [s["stage"] for s in quant["stages"]] == ["train_base", "compress"]


def test_evaluation_records_memory_and_a_real_int8_model_and_deployment_times_every_model(data_path, base,
                                                                                         tmp_path):
    """Every evaluated node records its peak memory; a PTQ INT8 node also evaluates the real integer model
    exported from its weights, beside the fake-quant model. The deployment stage then times every model in
    one job: a record per node, the PTQ INT8 node's real integer model beside its float twin."""
    compress(data_path, base, tmp_path, "ptq-int8")
    compress(data_path, base, tmp_path, "prune-0.5")
    dense = evaluate(data_path, base / "model.pt", base / "metrics.json", **{"attack.eval.steps": 0})
    pruned = evaluate(data_path, tmp_path / "prune-0.5.pt", tmp_path / "prune-0.5.json", "prune-0.5",
                      **{"attack.eval.steps": 0})
    quant = evaluate(data_path, tmp_path / "ptq-int8.pt", tmp_path / "ptq-int8.json", "ptq-int8",
                     **{"attack.eval.steps": 0})
    for record in (dense, pruned, quant):
        assert "latency_ms" not in record  # the deployment stage's
        # the peak of this (pytest) process so far: in a workflow job it is the job's own peak
        assert record["peak_rss_mb"] > 50 and all(stage["peak_rss_mb"] > 50 for stage in record["stages"])
        assert record["peak_rss_mb"] >= max(stage["peak_rss_mb"] for stage in record["stages"])  # never falls
    assert dense["int8"] is None and pruned["int8"] is None
    # filters are physically removed: the pruned checkpoint file is smaller, not just sparser
    assert pruned["params"] < dense["params"] / 2 and pruned["macs"] < dense["macs"] / 2
    assert pruned["checkpoint_bytes"] < dense["checkpoint_bytes"] / 2
    int8 = quant["int8"]
    assert int8["fake_quant_clean_acc"] == quant["clean_acc"]
    assert abs(int8["clean_acc"] - quant["clean_acc"]) <= 0.03 and int8["agreement"] > 0.9
    evals = [base / "eval-dense-none.json", tmp_path / "eval-prune-0.5-none.json", tmp_path / "eval-ptq-int8-none.json"]
    models = [base / "model.pt", tmp_path / "prune-0.5.pt", tmp_path / "ptq-int8.pt"]
    timed = deployment_stage.run(stage_settings("deployment", deployment={"rounds": 3, "batch_size": 16}),
                                 data=data_path, evals=evals, models=models, out_json=tmp_path / "deployment.json",
                                 out_csv=tmp_path / "deployment.csv", threads=2)
    assert written(tmp_path / "deployment.json")["nodes"] == timed
    assert [(n["compression"], sorted(n["models"])) for n in timed] == [
        ("dense", ["model"]), ("prune-0.5", ["model"]), ("ptq-int8", ["float_twin", "int8", "model"])]
    for node in timed:
        for about in node["models"].values():
            assert about["latency_ms"] > 0 and about["repeats"] == 3 and about["batch_size"] == 16
            assert about["threads"] == 1 and about["memory_bytes"] > 0
            assert about["latency_min_ms"] <= about["latency_ms"] <= about["latency_max_ms"]
    assert timed[0]["models"]["model"]["kind"] == "float" and timed[0]["models"]["model"]["channels_last"]
    assert timed[2]["models"]["model"]["kind"] == "fake-quant"
    int8_timed = timed[2]["models"]["int8"]
    assert 0 < int8_timed["disk_bytes"] < Path(base / "model.pt").stat().st_size / 2
    assert int8_timed["memory_bytes"] < timed[2]["models"]["float_twin"]["memory_bytes"] / 2
    assert timed[1]["models"]["model"]["memory_bytes"] < timed[0]["models"]["model"]["memory_bytes"] / 2
    rows = list(csv.DictReader((tmp_path / "deployment.csv").open()))
    assert [r["compression"] for r in rows] == ["dense", "prune-0.5", "ptq-int8"] and rows[0]["int8_latency_ms"] == ""
    # switched off: no timing, no INT8 export, the sizes still recorded
    off = deployment_stage.run(stage_settings("deployment", deployment={"rounds": 0}), data=data_path, evals=evals,
                               models=models, out_json=tmp_path / "off.json", out_csv=tmp_path / "off.csv")
    assert all(sorted(n["models"]) == ["model"] and "latency_ms" not in n["models"]["model"] for n in off)
    assert off[2]["checkpoint_bytes"] == timed[2]["checkpoint_bytes"] > 0


def test_pruning_removes_filters_and_finetuning_starts_from_the_pruned_weights(data_path, base, tmp_path):
    m = compress(data_path, base, tmp_path, "prune-0.5")
    assert m["arch"]["conv_channels"] == [16, 16, 32, 32, 64, 64]
    assert m["params"] < m["parent_params"] / 2
    pruned = evaluate(data_path, tmp_path / "prune-0.5.pt", tmp_path / "prune-0.5.json", "prune-0.5",
                      **{"attack.eval.steps": 0})
    # A near-zero learning rate: if fine-tuning started from fresh weights, accuracy would be ~10 %.
    finetune(data_path, tmp_path, "prune-0.5", "st", **{"finetune.prune.lr": 1e-6})
    tuned = evaluate(data_path, tmp_path / "ft.pt", tmp_path / "ft.json", "prune-0.5", "st",
                     **{"attack.eval.steps": 0})
    assert abs(tuned["clean_acc"] - pruned["clean_acc"]) <= 0.02
    assert tuned["params"] == pruned["params"]
    assert [s["stage"] for s in tuned["stages"]] == ["train_base", "compress", "finetune"]


def test_adversarial_finetuning_of_a_quantized_model_saves_and_reloads(data_path, base, tmp_path):
    compress(data_path, base, tmp_path, "ptq-int4")
    m = finetune(data_path, tmp_path, "ptq-int4", "ad")
    assert m["attack"]["eps"] == 0.1 and m["history"][-1]["eps"] == 0.1
    model, ckpt = load_model(tmp_path / "ft.pt")
    assert ckpt["quant"]["bits"] == 4
    with torch.no_grad():
        assert torch.isfinite(model(torch.rand(2, 1, 28, 28))).all()


def test_int1_is_a_real_one_bit_model(data_path, base, tmp_path):
    compress(data_path, base, tmp_path, "ptq-int1")
    dense = evaluate(data_path, base / "model.pt", base / "metrics.json", **{"attack.eval.steps": 0})
    binary = evaluate(data_path, tmp_path / "ptq-int1.pt", tmp_path / "ptq-int1.json", "ptq-int1",
                      **{"attack.eval.steps": 0})
    assert binary["weight_bytes"] < dense["weight_bytes"] / 20  # 1-bit conv/linear weights
    model, ckpt = load_model(tmp_path / "ptq-int1.pt")
    assert ckpt["quant"]["bits"] == 1
    with torch.no_grad():
        assert torch.isfinite(model(torch.rand(2, 1, 28, 28))).all()


QAT = {"init": "parent", "epochs": 1, "batch_size": 32, "lr": 0.01, "momentum": 0.9, "lr_drop_epoch": None,
       "lr_after_drop": 0.01, "eps_warmup_epochs": 0}


def qat(data_path, base, out, train, init):
    cfg = stage_settings("qat", **{"sweep.qat_bits": [8], "qat": QAT | {"init": init},
                                   "finetune.qat": {"lr": 0.01, "momentum": 0.9}})
    parent = {"model": base / "model.pt", "metrics": base / "metrics.json"} if init == "parent" else {}
    qat_stage.run(cfg, data=data_path, bits=8, train=train, seed=0, out_model=out / "qat-int8.pt",
                  out_metrics=out / "qat-int8.json", **parent)
    return written(out / "qat-int8.json")


def test_quantization_aware_training_from_the_parent_and_from_scratch(data_path, base, tmp_path):
    m = qat(data_path, base, tmp_path, "rb", "parent")
    assert (m["method"], m["level"], m["init"]) == ("qat", 8, "parent")
    assert [s["stage"] for s in m["stages"]] == ["train_base", "compress"]
    assert m["stages"][-1]["adversarial"] and m["stages"][-1]["estimated_macs"] > 0
    assert m["attack"]["eps_space"] == "pixel"
    result = evaluate(data_path, tmp_path / "qat-int8.pt", tmp_path / "qat-int8.json", "qat-int8",
                      **{"attack.eval.steps": 0})
    assert result["clean_acc"] > 0.6 and result["method"] == "qat"
    assert m["collapsed"] is False and [s["collapsed"] for s in m["stages"]] == [False, False]  # QAT's health
    _, ckpt = load_model(tmp_path / "qat-int8.pt")
    assert ckpt["quant"]["bits"] == 8

    scratch = tmp_path / "scratch"
    m = qat(data_path, base, scratch, "st", "scratch")
    assert [s["stage"] for s in m["stages"]] == ["compress"] and not m["stages"][0]["adversarial"]


def test_stages_record_their_estimated_compute(data_path, base, tmp_path):
    metrics = json.loads((base / "metrics.json").read_text())
    fwd = 13_686_528  # CNN8's multiply-accumulates per 28x28 image (FACTS.md: 13.7 M)
    stage = metrics["stages"][0]
    assert stage["estimated_macs"] == 3 * 3 * 512 * fwd  # 3 clean epochs of 512 images, 3 passes each
    assert not stage["adversarial"] and stage["device"] == "cpu"


def test_compression_labels_round_trip():
    for label in ("dense", "prune-0.5", "prune-0.85", "ptq-int8", "ptq-int16", "ptq-int1", "qat-int4"):
        assert compression_label(*parse_compression(label)) == label
    for bad in ("ptq-8", "prune-", "qat-int", "dense-1", "prune-1.2.3"):
        with pytest.raises(ValueError, match="unknown compression"):
            parse_compression(bad)


def test_the_real_int8_model_is_attacked_on_the_configured_subset(data_path, base, tmp_path):
    """evaluate.int8_robust_images: the record says how many images the deployed model was attacked on and
    gives the fake-quant model's robust accuracy on them; samples.csv leaves the others' cells empty."""
    compress(data_path, base, tmp_path, "ptq-int8")
    record = evaluate(data_path, tmp_path / "ptq-int8.pt", tmp_path / "ptq-int8.json", "ptq-int8",
                      **{"evaluate.int8_robust_images": 40})
    int8 = record["int8"]
    assert int8["robust_images"] == 40 and 0 <= int8["fake_quant_robust_acc"] <= 1
    rows = list(csv.DictReader(open(tmp_path / "eval-ptq-int8-none.csv")))
    attacked = [r for r in rows if r["int8_robust"] != ""]
    assert len(rows) == 128 and len(attacked) == 40 and all(r["int8_clean_correct"] != "" for r in rows)
    assert sum(int(r["int8_robust"]) for r in attacked) / 40 == pytest.approx(int8["robust_acc"])
    assert read_outcome(tmp_path / "eval-ptq-int8-none.csv") is not None  # the report reads it as usual


def test_evaluation_writes_the_per_sample_outcome_the_audit_and_a_curve(data_path, base, tmp_path):
    compress(data_path, base, tmp_path, "ptq-int8")
    record = evaluate(data_path, tmp_path / "ptq-int8.pt", tmp_path / "ptq-int8.json", "ptq-int8", curve=True)
    assert record["attack_order"] == ["pgd", "apgd_ce", "apgd_t", "transfer", "square"]
    assert record["robust_acc"] <= record["robust_acc_whitebox"] <= record["robust_acc_pgd"] <= record["clean_acc"]
    assert set(record["audit"]["checks"]) == set(vocab.AUDIT_CHECKS) and isinstance(record["audit"]["flags"], list)
    assert [p["eps_fraction"] for p in record["robustness_curve"]] == [0, 1]
    assert record["robustness_curve"][0]["robust_acc"] == record["clean_acc"] and not record["diverged"]
    # the deployed integer model faces the transfer and black-box attacks too
    assert set(record["int8"]["attacks"]) == {"transfer", "square"} and 0 <= record["int8"]["robust_acc"] <= 1
    rows = list(csv.DictReader(open(tmp_path / "eval-ptq-int8-none.csv")))
    assert len(rows) == record["n_test"] == 128
    assert sum(int(r["clean_correct"]) for r in rows) / 128 == pytest.approx(record["clean_acc"])
    assert sum(int(r["robust"]) for r in rows) / 128 == pytest.approx(record["robust_acc"])
    # a quantized node is escalated: each step attacks what the suite (and earlier steps) left standing
    escalation = record["escalation"]
    assert escalation["reasons"][0] == "quantized" and len(escalation["steps"]) == 1  # one step configured
    step = escalation["steps"][0]
    assert step["suite"]["attacks"] == ["pgd", "apgd_ce", "apgd_t"] and step["suite"]["apgd"]["steps"] == 5
    assert step["attacked"] == round(escalation["robust_acc_before"] * 128)
    assert record["robust_acc"] == step["robust_acc_after"] <= escalation["robust_acc_before"]
    assert set(escalation["audit_before"]["checks"]) == set(record["audit"]["checks"])
    broken = Counter(r["broken_by"] for r in rows if r["broken_by"])
    expected = Counter({name: a["broken"] for name, a in record["attacks"].items()})
    for step in escalation["steps"]:
        expected.update({name: a["broken"] for name, a in step["attacks"].items()})
    assert broken == +expected
    assert {"int8_clean_correct", "int8_robust", "int8_broken_by"} <= set(rows[0])
    # not quantized and nothing flagged that escalates: no escalation
    dense = evaluate(data_path, base / "model.pt", base / "metrics.json", **{"evaluate.escalation.when": ["quantized"]})
    assert dense["escalation"] is None
    # `always`: every node is escalated, a dense one too
    dense = evaluate(data_path, base / "model.pt", base / "metrics.json", **{"evaluate.escalation.when": ["always"]})
    escalation = dense["escalation"]
    assert escalation["reasons"] == ["always"]
    assert len(escalation["steps"]) == (1 if escalation["robust_acc_before"] > 0 else 0)  # none when none stands
    assert dense["robust_acc"] == min([escalation["robust_acc_before"]] +
                                      [step["robust_acc_after"] for step in escalation["steps"]])


def test_a_diverged_model_is_reported_as_diverged_not_scored(data_path, base, tmp_path):
    model, ckpt = load_model(base / "model.pt")
    with torch.no_grad():
        model.fc2.bias.fill_(float("nan"))
    save_model(tmp_path / "nan.pt", model, ckpt["arch"])
    record = evaluate(data_path, tmp_path / "nan.pt", base / "metrics.json")
    assert record["diverged"] and "fc2.bias" in record["diverged_reason"]
    assert record["clean_acc"] is None and record["robust_acc"] is None and record["audit"] is None
    rows = list(csv.DictReader(open(tmp_path / "eval-dense-none.csv")))
    assert len(rows) == 128 and rows[0]["clean_correct"] == ""


# Weight decay of 5 at lr 0.1 shrinks every weight by half each SGD step: after an epoch the network's
# logits no longer depend on the input and training sits at ln 10, on every seed and CPU (the weights,
# not a trajectory, decide it).
COLLAPSING = {"train.weight_decay": 5.0, "train.lr_drop_epoch": None}
FAST_EVAL = {"attack.eval.steps": 0, "evaluate.attacks": ["pgd"], "evaluate.int8_export": False}


@pytest.mark.parametrize("seed", [0, 1])
def test_a_collapsed_training_is_recorded_and_marks_every_node_built_on_it(data_path, tmp_path, caplog, seed):
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    with caplog.at_level("WARNING", logger="advfine"):
        record = train_base.run(stage_settings("train_base", **COLLAPSING), data=data_path, train="st", seed=seed,
                                out_model=base_dir / "model.pt", out_metrics=base_dir / "metrics.json")
    metrics = written(base_dir / "metrics.json")
    assert metrics["collapsed"] is True and "ln 10" in metrics["collapsed_reason"]
    assert metrics["stages"][-1]["collapsed"] is True
    assert record.collapsed_reason == metrics["collapsed_reason"] and record.stages[-1].collapsed
    assert any("COLLAPSED" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    # its own evaluation: the model is scored (finite numbers) and marked by its training and its predictions
    own = evaluate(data_path, base_dir / "model.pt", base_dir / "metrics.json", **FAST_EVAL)
    assert own["collapsed"] and "ln 10" in own["collapsed_reason"] and "predicts class" in own["collapsed_reason"]
    assert own["collapsed_upstream"] == [] and not own["diverged"] and 0 <= own["clean_acc"] <= 0.3
    # a node fine-tuned from it carries the mark of the stage that collapsed, whatever its own training did
    def tune(mode):
        finetune_stage.run(stage_settings("finetune"), data=data_path, compression="dense", mode=mode,
                           seed=seed, model=base_dir / "model.pt", metrics=base_dir / "metrics.json",
                           out_model=tmp_path / f"{mode}.pt", out_metrics=tmp_path / f"{mode}.json")
        return written(tmp_path / f"{mode}.json")

    tuned = tune("st")
    assert tuned["stages"][0]["collapsed"] is True and tuned["collapsed"] == tuned["stages"][1]["collapsed"]
    built_on = evaluate(data_path, tmp_path / "st.pt", tmp_path / "st.json", "dense", "st", **FAST_EVAL)
    assert built_on["collapsed_upstream"] == ["train_base"]
    # a from-scratch arm owes nothing to the collapsed base model
    scratch = tune("scratch")
    assert [st["stage"] for st in scratch["stages"]] == ["finetune"]


def test_a_healthy_training_is_not_marked_collapsed(data_path, base):
    metrics = json.loads((base / "metrics.json").read_text())
    assert metrics["collapsed"] is False and metrics["collapsed_reason"] is None
    assert metrics["stages"][0]["collapsed"] is False
    record = evaluate(data_path, base / "model.pt", base / "metrics.json", **FAST_EVAL)
    assert record["collapsed"] is False and record["collapsed_reason"] is None and record["collapsed_upstream"] == []


def test_the_evaluate_stage_attacks_in_l2_everywhere_under_attack_norm_l2(data_path, base, tmp_path, monkeypatch):
    """attack.norm: l2 reaches every attack of an evaluation: the suite's (transfer included), the audit's,
    the robustness curve's and the real INT8 model's; each crafted point lies in the L2 ball (an L-inf
    attack at that radius moves every pixel by up to eps: about 28 eps in L2 on 28 x 28 images)."""
    import advfine.core.audit
    import advfine.core.evaluate

    crafted = []  # (where, attack, radius, norm, L2 distance of each point)

    def spy_craft(name, suite, model, source, xb, yb, noise, seed, num_classes):
        x_adv = craft(name, suite, model, source, xb, yb, noise, seed, num_classes)
        crafted.append(("suite", name, suite.threat.eps, suite.threat.norm, (x_adv - xb).flatten(1).norm(dim=1)))
        return x_adv

    def spy_apgd(model, x, y, threat, steps, loss, *args, **kwargs):
        x_adv, fooled = audit_apgd(model, x, y, threat, steps, loss, *args, **kwargs)
        crafted.append(("audit", "apgd_ce", threat.eps, threat.norm, (x_adv - x).flatten(1).norm(dim=1)))
        return x_adv, fooled

    craft, audit_apgd = advfine.core.evaluate._craft, advfine.core.audit.apgd
    monkeypatch.setattr(advfine.core.evaluate, "_craft", spy_craft)
    monkeypatch.setattr(advfine.core.audit, "apgd", spy_apgd)
    compress(data_path, base, tmp_path, "ptq-int8")
    eps = 0.5
    over = {"attack.norm": "l2", "attack.eval.eps": eps, "attack.eval.step_size": eps / 2, "attack.eval.steps": 3,
            "evaluate.attacks": ["pgd", "apgd_ce", "apgd_t", "fab_t", "transfer", "square"],
            "evaluate.fab": {"steps": 3},
            "evaluate.curve_eps_fractions": [0, 0.5, 1], "evaluate.audit.large_eps_l2": 5.0}
    written = evaluate(data_path, tmp_path / "ptq-int8.pt", tmp_path / "ptq-int8.json", "ptq-int8", curve=True, **over)
    assert written["suite"]["norm"] == written["attack"]["norm"] == "l2" and written["attack"]["name"] == "pgd_l2"
    assert written["attack_order"] == ["pgd", "apgd_ce", "apgd_t", "fab_t", "transfer", "square"]
    assert {name: a["norm"] for name, a in written["attacks"].items()} == dict.fromkeys(written["attack_order"], "l2")
    assert written["audit"]["norm"] == "l2" and written["audit"]["large_eps"] == 5.0
    curve = [(point["norm"], point["eps_pixel"]) for point in written["robustness_curve"]]
    assert curve == [("l2", 0), ("l2", eps / 2), ("l2", eps)]
    assert {name: a["norm"] for name, a in written["int8"]["attacks"].items()} == {"transfer": "l2", "square": "l2"}
    # every point any attack crafted lies in its L2 ball, and the attacks did move points far in L2
    assert {(where, name) for where, name, *_ in crafted} >= {("suite", a) for a in written["attack_order"]} | {
        ("audit", "apgd_ce")}
    assert {norm for _, _, _, norm, _ in crafted} == {"l2"}
    assert {radius for where, _, radius, _, _ in crafted if where == "suite"} == {eps / 2, eps}
    assert {radius for where, _, radius, _, _ in crafted if where == "audit"} == {5.0, eps}
    for where, name, radius, _, distance in crafted:
        assert distance.max() <= radius * (1 + 1e-5) + 1e-6, (where, name, radius, distance.max())
    assert max(d.max().item() / radius for _, _, radius, _, d in crafted) > 0.9
    assert written["robust_acc"] <= written["robust_acc_pgd"] <= written["clean_acc"]


def test_only_the_from_scratch_control_takes_finetune_scratch_settings():
    from conftest import tiny_config

    from advfine.core.schedule import finetune_section

    cfg = tiny_config(**{"finetune.scratch": {"eps_warmup_epochs": 1, "grad_clip_norm": 5.0}})
    scratch = finetune_section(cfg["finetune"], "prune", scratch=True)
    assert scratch["eps_warmup_epochs"] == 1 and scratch["grad_clip_norm"] == 5.0 and scratch["lr"] == 0.1
    for mode in ("ad", "fgsm", "trades"):
        shared = finetune_section(cfg["finetune"], "prune")
        assert shared["eps_warmup_epochs"] == 0 and shared["grad_clip_norm"] is None
        assert scratch == shared | {"eps_warmup_epochs": 1, "grad_clip_norm": 5.0}
