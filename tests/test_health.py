import math
from dataclasses import replace
from pathlib import Path

from record_factory import eval_record, lineage_entry, stage_record

from advfine.core.health import prediction_collapse, training_collapse
from advfine.pipeline.records import (MetricsFileError, read_eval_record, read_stage_record, write_eval_record,
                                      write_stage_record)


def test_a_model_at_chance_on_clean_training_images_or_predicting_one_class_collapsed():
    varied = list(range(10)) * 20
    assert training_collapse(math.log(10), 0.10, varied, 10)                 # at ln 10 and at chance
    assert training_collapse(2.29, 0.14, varied, 10)                         # within 1 % of ln 10, near chance
    assert "class 3" in training_collapse(1.5, 0.5, [3] * 190 + list(range(10)), 10)  # a constant classifier
    assert training_collapse(2.29, 0.30, varied, 10) is None                 # high loss, but it classifies
    assert training_collapse(1.2, 0.12, varied, 10) is None                  # low accuracy, confident: no
    assert training_collapse(0.3, 0.9, varied, 10) is None


def test_a_constant_classifier_is_caught_and_a_poor_but_varied_one_is_not():
    assert "class 6" in prediction_collapse([6] * 95 + [1] * 5, 10)
    assert prediction_collapse([6] * 70 + list(range(10)) * 3, 10) is None
    assert prediction_collapse([], 10) is None


# ----------------------------------------------------------------------------- the record


def test_an_evaluated_model_is_marked_by_its_own_training_its_predictions_and_its_lineage():
    from advfine.core.health import collapse_record
    from advfine.pipeline.run_health import model_collapse

    base = lineage_entry("train_base", **collapse_record("epoch 2: training loss 2.3026 >= ln 10"))
    pruned = lineage_entry("compress", **collapse_record(None))
    tuned = lineage_entry("finetune", **collapse_record(None))
    assert model_collapse([base], [1, 2, 3] * 10, 10) == {
        "collapsed": True, "collapsed_reason": base.collapsed_reason, "collapsed_upstream": [],
        "constant_predictions": None}
    built_on = model_collapse([base, pruned, tuned], list(range(10)) * 3, 10)
    assert built_on == {"collapsed": False, "collapsed_reason": None, "collapsed_upstream": ["train_base"],
                        "constant_predictions": None}
    # a model compression destroyed without training: a measurement, not a collapse
    destroyed = model_collapse([lineage_entry("train_base"), pruned], [4] * 30, 10, trained=False)
    assert not destroyed["collapsed"] and "class 4" in destroyed["constant_predictions"]
    # a model its stage trained that predicts one class collapsed
    tuned_to_one = model_collapse([replace(base, **collapse_record(None)), tuned], [4] * 30, 10, trained=True)
    assert tuned_to_one["collapsed"] and "class 4" in tuned_to_one["collapsed_reason"]
    assert tuned_to_one["constant_predictions"] is None
    assert model_collapse([base], None, 10)["collapsed"]  # a diverged model has no predictions


# ----------------------------------------------------------------------------- the end-of-run banner


def run_results(root):
    """A run's results folder (paths relative to the workflow's directory, as in eval.json): on seed 1 f_rb
    collapsed in training; its own evaluation, its pruned model's and that model's T_ad carry the mark, the
    from-scratch arm under it does not; on seed 0 T_st(f_st) diverged (its training loss went non-finite, which
    its metrics.json also calls a collapse); everything else is healthy."""
    reason = "epoch 20: training accuracy 0.100, chance is 0.100 (loss 2.3026, ln 10 = 2.3026)"
    node = Path("results/exp/fashion_mnist-cnn8")

    def evaluation(folder, model_folder, stages, **over):
        (root / folder).mkdir(parents=True, exist_ok=True)
        write_eval_record(root / folder / "eval.json", eval_record(
            model_path=str(model_folder / "model.pt"), stages=[lineage_entry(s) for s in stages], **over))

    def training(folder, stage, lineage, **over):
        (root / folder).mkdir(parents=True, exist_ok=True)
        write_stage_record(root / folder / "metrics.json", stage_record(stage, lineage, **over))

    rb, st = node / "seed1/base-rb", node / "seed0/base-st"
    training(rb, "train_base", ["train_base"], collapsed=True, collapsed_reason=reason)
    evaluation(rb / "dense/ft-none", rb, ["train_base"], collapsed=True, collapsed_reason=reason)
    training(rb / "prune-0.5", "compress", ["train_base", "compress"])
    evaluation(rb / "prune-0.5/ft-none", rb / "prune-0.5", ["train_base", "compress"],
               collapsed_upstream=["train_base"])
    evaluation(rb / "prune-0.5/ft-ad", rb / "prune-0.5/ft-ad", ["train_base", "compress", "finetune"],
               collapsed_upstream=["train_base"])
    evaluation(rb / "prune-0.5/ft-scratch", rb / "prune-0.5/ft-scratch", ["finetune"])
    training(st, "train_base", ["train_base"])
    evaluation(st / "dense/ft-none", st, ["train_base"])
    training(st / "dense/ft-st", "finetune", ["train_base", "finetune"], collapsed=True,
             collapsed_reason="epoch 1: training loss nan (diverged)")
    evaluation(st / "dense/ft-st", st / "dense/ft-st", ["train_base", "finetune"], diverged=True,
               diverged_reason="non-finite weights or buffers: fc2.bias", clean_acc=None, robust_acc=None)
    (root / st / "dense/ft-ad").mkdir(parents=True)
    (root / st / "dense/ft-ad/eval.json").write_text("{half-written")  # skipped, never fatal
    (root / st / "dense/ft-st/old").mkdir()
    (root / st / "dense/ft-st/old/eval.json").write_text('{"diverged": true}')  # another format: skipped
    return root / "results/exp", reason


def test_the_end_of_run_banner_names_every_collapsed_or_diverged_model(tmp_path, monkeypatch, capsys):
    from advfine.pipeline.run_health import announce_health, unhealthy_models

    monkeypatch.chdir(tmp_path)
    results, reason = run_results(tmp_path)
    models = unhealthy_models("results/exp")
    assert [(m.outcome, m.stage, m.built_on) for m in models] == [("diverged", "finetune", 0),
                                                                  ("collapsed", "train_base", 2)]
    assert models[1].folder == results / "fashion_mnist-cnn8/seed1/base-rb" and models[1].reason == reason
    banner = announce_health("results/exp")
    printed = capsys.readouterr().err
    assert banner in printed and "TRAINING HEALTH: 2 model(s)" in banner
    assert "COLLAPSED results/exp/fashion_mnist-cnn8/seed1/base-rb (stage train_base)" in banner and reason in banner
    assert "DIVERGED" in banner and "fc2.bias" in banner and "carry the mark: 2" in banner


def test_the_banner_is_silent_when_every_model_is_healthy(tmp_path, monkeypatch, capsys):
    from advfine.pipeline.run_health import announce_health

    monkeypatch.chdir(tmp_path)
    results, _ = run_results(tmp_path)
    assert announce_health("results/exp") and capsys.readouterr().err
    for path in results.rglob("metrics.json"):
        write_stage_record(path, replace(read_stage_record(path), collapsed=False))
    for path in results.rglob("eval.json"):
        try:
            record = read_eval_record(path)
        except MetricsFileError:
            continue  # the half-written file and the one of another format
        write_eval_record(path, replace(record, collapsed=False, collapsed_upstream=[], diverged=False,
                                        clean_acc=0.9, robust_acc=0.1))
    assert announce_health("results/exp") == "" and capsys.readouterr().err == ""
    assert announce_health(tmp_path / "no-such-run") == ""
