"""The escalation (advfine.core.evaluate.Escalation, escalate): stronger attacks on the samples a node's
suite left standing, step by step until a step breaks none, for the nodes the config names."""
import pytest
import torch
from torch import nn

from advfine.core.attacks.pgd import PGDAttack
from advfine.core.attacks.threat import ThreatModel
from advfine.core.evaluate import Escalation, Suite, escalate, evaluate_model
from advfine.pipeline.config import ConfigError, section_with_defaults, validate_config
from conftest import tiny_config

CPU = torch.device("cpu")
THREAT = ThreatModel("linf", 0.1)


class Saturating(nn.Module):
    """Four classes; class 1's logit grows with the image's mean and saturates at class 0's, 1: at eps 0.1 a
    point with mean >= 0.525 ties them (an error), while the clean images (mean 0.5) are classified right."""

    def forward(self, x):
        mean = x.flatten(1).mean(1)
        one = torch.ones_like(mean)
        return torch.stack([one, (20 * mean - 9.5).clamp(max=1.0), -one, -2 * one], 1)


class Certain(nn.Module):
    """Class 0 leads by 10 everywhere: no attack can break it."""

    def forward(self, x):
        return torch.tensor([10.0, 0.0, 0.0, 0.0]) + 0 * x.flatten(1)[:, :4]


def weak_suite() -> Suite:
    """PGD that cannot reach the tie: one step of 0.001."""
    return Suite(pgd=PGDAttack(THREAT, step_size=0.001, steps=1), attacks=("pgd",))


def step(*attacks, **settings) -> Suite:
    return Suite(pgd=PGDAttack(THREAT, step_size=0.025, steps=10), attacks=("pgd", *attacks), **settings)


def test_escalation_breaks_what_the_suite_left_standing_and_says_which_step_did():
    x, y = torch.full((8, 1, 4, 4), 0.5), torch.zeros(8, dtype=torch.long)
    model = Saturating()
    result = evaluate_model(model, x, y, weak_suite(), 8, CPU, seed=0, num_classes=4)
    assert result["robust_acc"] == 1.0
    outcome, records = escalate(model, x, y, result["per_sample"], (step("apgd_ce", apgd_steps=10),
                                                                    step("apgd_ce", apgd_restarts=3)), 8, CPU, 0,
                                num_classes=4)
    assert (outcome["broken_by"] >= 0).all() and (outcome["broken_in_step"] == 1).all()
    # step 1 broke all 8: nothing is left for step 2
    assert [(r["step"], r["attacked"], r["broken"]) for r in records] == [(1, 8, 8)]
    assert records[0]["robust_acc_after"] == 0.0 and records[0]["suite"]["apgd"]["steps"] == 10


def test_escalation_stops_at_the_first_step_that_breaks_nothing():
    x, y = torch.rand(6, 1, 4, 4), torch.zeros(6, dtype=torch.long)
    model = Certain()
    result = evaluate_model(model, x, y, weak_suite(), 6, CPU, seed=0, num_classes=4)
    steps = (step("apgd_ce", apgd_steps=5), step("apgd_ce", "apgd_t", apgd_steps=5, target_classes=2))
    outcome, records = escalate(model, x, y, result["per_sample"], steps, 6, CPU, 0, num_classes=4)
    assert [(r["step"], r["attacked"], r["broken"]) for r in records] == [(1, 6, 0)]
    assert (outcome["broken_in_step"] == -1).all() and (outcome["broken_by"] == -1).all()


def test_what_calls_for_escalation():
    evaluate = section_with_defaults("evaluate", {"batch_size": 8})
    attack = tiny_config()["attack"]
    escalation = Escalation.from_config(attack, evaluate)
    # the default: AutoAttack's standard suite, then APGD with 5 restarts
    first, second = escalation.steps
    assert first.attacks == ("pgd", "apgd_ce", "apgd_t", "fab_t", "square") and first.apgd_steps == 100
    assert first.target_classes == 9 and first.square_queries == 5000 and first.fab_steps == 100
    assert second.attacks == ("pgd", "apgd_ce", "apgd_t") and second.apgd_restarts == 5
    assert first.threat == PGDAttack.from_config(attack, "eval").threat
    assert escalation.reasons(quantized=True, flags=[]) == ["quantized"]
    assert escalation.reasons(quantized=False, flags=["more_effort_gain", "large_eps_standing"]) == ["more_effort_gain"]
    assert escalation.reasons(quantized=False, flags=[]) == []
    off = Escalation.from_config(attack, evaluate | {"escalation": {"when": ["quantized"], "steps": []}})
    assert off.reasons(quantized=True, flags=["more_effort_gain"]) == []
    every = Escalation.from_config(attack, evaluate | {"escalation": evaluate["escalation"] | {"when": ["always"]}})
    assert every.reasons(quantized=False, flags=[]) == ["always"]
    assert every.reasons(quantized=True, flags=["more_effort_gain"]) == ["always"]


@pytest.mark.parametrize("steps", [[{"attacks": ["square", "apgd_ce"]}], [{"attacks": ["pgd"]}], [{"attacks": []}]])
def test_a_step_with_attacks_out_of_order_or_unknown_is_refused_naming_the_key(steps):
    with pytest.raises(ConfigError, match=r"evaluate\.escalation\.steps\.0\.attacks"):
        validate_config(tiny_config(validate=False, **{"evaluate.escalation": {"steps": steps}}))
