"""Training health: when a model counts as collapsed.

A collapsed model has stopped being a classifier: it predicts one class (or nearly) for every input, so
its training loss sits at the entropy of the labels (ln C for C balanced classes) and its accuracy at the
share of one class. Like a diverged model, it is a recorded outcome, never a number in a mean.

Two independent criteria, each a pure function of what a stage already has:

* ``training_collapse``: the last epoch of a training run (after its eps warm-up) ended at chance
  accuracy, or at a loss of ln C or more. A collapsed network's logits no longer depend on the input,
  so SGD can only fit the class prior; both numbers then sit at their chance values.
* ``prediction_collapse``: on a set of inputs (the test set), one class takes at least
  ``CONSTANT_SHARE`` of the predictions. This also catches a model that never trained badly but was
  destroyed by compression (an 80 %-pruned model without fine-tuning can predict one class for every
  image).

No torch import: these take plain numbers and sequences, so the report and tests use them freely.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

# Training accuracy this close to chance (1 / C) counts as chance: a model that learned anything at all
# is far above it within an epoch, adversarially trained ones included (robust training accuracy of a
# working f_rb on Fashion-MNIST is about 0.6, on CIFAR-10 about 0.4).
CHANCE_MARGIN = 0.05
# A loss within this fraction of ln C (or above it) is the loss of a model that ignores its input.
LOSS_TOLERANCE = 0.01
# One class taking this share of the predictions on a balanced test set is a (near-)constant classifier.
CONSTANT_SHARE = 0.9


def chance_accuracy(num_classes: int) -> float:
    return 1.0 / num_classes


def training_collapse(history: Sequence[dict], num_classes: int) -> str | None:
    """Why the training run with per-epoch records ``history`` (``loss``, ``train_acc``, ``epoch``) ended
    collapsed, or None. Only the last epoch counts: a run that recovered trained a working model."""
    if not history:
        return None
    last = history[-1]
    loss, acc = float(last["loss"]), float(last["train_acc"])
    chance_loss = math.log(num_classes)
    if not math.isfinite(loss):
        return f"epoch {last['epoch']}: training loss {loss} (diverged)"
    if acc <= chance_accuracy(num_classes) + CHANCE_MARGIN:
        return (f"epoch {last['epoch']}: training accuracy {acc:.3f}, chance is {chance_accuracy(num_classes):.3f} "
                f"(loss {loss:.4f}, ln {num_classes} = {chance_loss:.4f})")
    if loss >= chance_loss * (1 - LOSS_TOLERANCE):
        return (f"epoch {last['epoch']}: training loss {loss:.4f} >= ln {num_classes} = {chance_loss:.4f} "
                f"(training accuracy {acc:.3f})")
    return None


def prediction_collapse(predictions: Iterable[int], num_classes: int) -> str | None:
    """Why a model whose predicted classes on some inputs are ``predictions`` is a (near-)constant
    classifier, or None."""
    counts = Counter(int(p) for p in predictions)
    total = sum(counts.values())
    if total == 0:
        return None
    cls, top = counts.most_common(1)[0]
    share = top / total
    if share >= CONSTANT_SHARE:
        return (f"predicts class {cls} for {share:.1%} of {total} test images "
                f"({len(counts)} of {num_classes} classes ever predicted)")
    return None
