import math

from advfine.health import prediction_collapse, training_collapse


def epoch(loss, acc, n=1):
    return {"epoch": n, "loss": loss, "train_acc": acc}


def test_a_run_ending_at_ln_c_or_chance_accuracy_collapsed_and_a_learning_run_did_not():
    assert training_collapse([epoch(2.19, 0.30, 1), epoch(math.log(10), 0.11, 2)], 10)
    assert training_collapse([epoch(2.31, 0.30, 1)], 10)          # loss at ln 10, accuracy not yet at chance
    assert training_collapse([epoch(1.2, 0.12, 1)], 10)           # accuracy at chance
    assert training_collapse([epoch(float("nan"), 0.5, 1)], 10)
    assert training_collapse([epoch(2.5, 0.1, 1), epoch(1.1, 0.6, 2)], 10) is None   # recovered
    assert training_collapse([], 10) is None


def test_a_constant_classifier_is_caught_and_a_poor_but_varied_one_is_not():
    assert "class 6" in prediction_collapse([6] * 95 + [1] * 5, 10)
    assert prediction_collapse([6] * 70 + list(range(10)) * 3, 10) is None
    assert prediction_collapse([], 10) is None
