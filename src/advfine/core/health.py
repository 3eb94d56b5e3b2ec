"""Training health: when a model counts as collapsed.

A collapsed model has stopped being a classifier: it predicts one class (or nearly) for every input, so
its training loss sits at the entropy of the labels (ln C for C balanced classes) and its accuracy at the
share of one class. Like a diverged model, it is a recorded outcome, never a number in a mean.

Two criteria, each a pure function of numbers a stage computes:

* ``training_collapse``: the trained model, on clean images of its own training set, sits at chance
  accuracy with a loss of ln C (within 1 %) or more, or predicts one class. Clean, not the training
  run's own statistics: those are on adversarial points for adversarial training (a working model that
  the attack breaks scores 0 % at a loss above ln C), and an epoch's mean mixes the model it started as
  (a destroyed pruned one) with the one it ended as.
* ``prediction_collapse``: on a set of inputs (the test set), one class takes at least
  ``CONSTANT_SHARE`` of the predictions. For a model that its stage trained this is a collapse too; a
  model compression destroyed without training (an 80 %-pruned model without fine-tuning can predict
  one class for every image) is the paper's own measurement, recorded as ``constant_predictions``.

``collapse_record``: the collapse keys of a training stage's record. How the workflow carries them along a
node's lineage and announces them is ``advfine.pipeline.run_health``.

No torch import: these take plain numbers and sequences.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

# Clean accuracy this close to chance (1 / C) counts as chance: a model that learned anything at all is
# far above it.
CHANCE_MARGIN = 0.05
# A loss within this fraction of ln C (or above it) is the loss of a model that ignores its input.
LOSS_TOLERANCE = 0.01
# One class taking this share of the predictions on a balanced test set is a (near-)constant classifier.
CONSTANT_SHARE = 0.9
# Training images a trained model is checked on: enough for the shares above, a second on a CPU.
HEALTH_IMAGES = 2048


def chance_accuracy(num_classes: int) -> float:
    return 1.0 / num_classes


def training_collapse(loss: float, accuracy: float, predictions: Sequence[int], num_classes: int) -> str | None:
    """Why a trained model is collapsed, or None, from its clean cross-entropy ``loss``, ``accuracy`` and
    predicted classes on (up to ``HEALTH_IMAGES`` of) its training images."""
    chance_loss = math.log(num_classes)
    if accuracy <= chance_accuracy(num_classes) + CHANCE_MARGIN and loss >= chance_loss * (1 - LOSS_TOLERANCE):
        return (f"clean training accuracy {accuracy:.3f}, chance is {chance_accuracy(num_classes):.3f}, and loss "
                f"{loss:.4f}, ln {num_classes} = {chance_loss:.4f}, on {len(predictions)} training images")
    return prediction_collapse(predictions, num_classes, "training images")


def prediction_collapse(predictions: Iterable[int], num_classes: int, images: str = "test images") -> str | None:
    """Why a model whose predicted classes on some ``images`` are ``predictions`` is a (near-)constant
    classifier, or None."""
    counts = Counter(int(p) for p in predictions)
    total = sum(counts.values())
    if total == 0:
        return None
    cls, top = counts.most_common(1)[0]
    share = top / total
    if share >= CONSTANT_SHARE:
        return (f"predicts class {cls} for {share:.1%} of {total} {images} "
                f"({len(counts)} of {num_classes} classes ever predicted)")
    return None


def collapse_record(reason: str | None) -> dict:
    """The collapse keys of a stage's metrics.json and of its entry in ``stages``: ``reason`` from
    ``training_collapse`` (None: healthy, or a stage that does not train)."""
    return {"collapsed": reason is not None, "collapsed_reason": reason}
