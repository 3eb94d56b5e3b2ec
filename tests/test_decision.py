"""The decision rule (advfine.core.decision): a sample counts as correct only when the true class's logit is
strictly the largest. A tie is an error everywhere: in the clean accuracy and in every attack's success test."""
import pytest
import torch
from torch import nn

from advfine.core.attacks.pgd import PGDAttack
from advfine.core.attacks.threat import ThreatModel
from advfine.core.decision import correct, margin
from advfine.core.evaluate import Suite, clean_accuracy, evaluate_model, run_suite

CPU = torch.device("cpu")


def test_a_tie_is_an_error_and_a_strict_lead_is_correct():
    logits = torch.tensor([[2.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 1.0, 1.0], [float("nan"), 0.0, 0.0]])
    y = torch.tensor([0, 0, 1, 0])
    assert correct(logits, y).tolist() == [False, True, False, False]
    assert margin(logits, y)[:3].tolist() == [0.0, 1.0, 0.0]
    assert (logits[:3].argmax(1) == y[:3]).tolist() == [True, True, True]  # argmax would call the ties right


class Tied(nn.Module):
    """Logits (1, 1, 0) for every image: class 0 and class 1 tie."""

    def forward(self, x):
        return torch.tensor([1.0, 1.0, 0.0]) + 0 * x.flatten(1).sum(1, keepdim=True)


def test_clean_accuracy_counts_a_tie_as_an_error():
    x, y = torch.rand(8, 1, 4, 4), torch.zeros(8, dtype=torch.long)
    assert clean_accuracy(Tied(), x, y, 4, CPU) == 0.0
    result = evaluate_model(Tied(), x, y, Suite(pgd=PGDAttack(ThreatModel("linf", 0.1), 0.05, 3), attacks=("pgd",)),
                            4, CPU, seed=0, num_classes=3)
    assert result["clean_acc"] == 0.0 and result["per_sample"]["predictions"].tolist() == [0] * 8


class Saturating(nn.Module):
    """Four classes. True class 0 at logit 1; class 1's logit grows with the image's mean but saturates at exactly 1: an
    attacker can make the two tie, never make class 1 win. At the clean images (mean 0.5) class 0 leads."""

    def forward(self, x):
        mean = x.flatten(1).mean(1)
        rising = (20 * mean - 9.5).clamp(max=1.0)
        return torch.stack([torch.ones_like(mean), rising, -torch.ones_like(mean), -2 * torch.ones_like(mean)], 1)


@pytest.mark.parametrize("name", ["pgd", "apgd_ce", "apgd_t", "square"])
@pytest.mark.parametrize("seed", [0, 1])
def test_every_attack_counts_a_tie_it_reaches_as_a_break(name, seed):
    """eps 0.1 lets the mean reach 0.6, where the logits tie: every sample is broken, though argmax (class 0
    first) would call each of them robust."""
    x, y = torch.full((6, 1, 4, 4), 0.5), torch.zeros(6, dtype=torch.long)
    model = Saturating()
    assert correct(model(x), y).all()
    suite = Suite(pgd=PGDAttack(ThreatModel("linf", 0.1), step_size=0.025, steps=10), attacks=("pgd", name)
                  if name != "pgd" else ("pgd",), apgd_steps=10, target_classes=1, square_queries=200)
    broken_by, records = run_suite(model, x, y, torch.ones(6, dtype=torch.bool), suite, 6, CPU, seed,
                                   num_classes=4, names=(name,))
    assert (broken_by >= 0).all(), records
