"""The attack suite and its audit on a CNN8 trained on real digits: the attacks respect the threat
model, APGD is at least as strong as PGD and agrees with torchattacks', a gradient-masking model is
flagged and broken by the black-box attack, a normal model falls to ~0 % at a large radius."""
from __future__ import annotations

import pytest
import torch
import torchattacks
from torch import nn

from advfine.core.attacks.apgd import apgd, dlr_loss, dlr_loss_targeted, top_k_targets
from advfine.core.attacks.fab import fab_t
from advfine.core.attacks.pgd import PGDAttack
from advfine.core.attacks.square import square_linf, window_fraction
from advfine.core.attacks.threat import ThreatModel
from advfine.core.audit import audit_evaluation, zero_gradient_share
from advfine.core.datasets import load_dataset
from advfine.core.decision import margin
from advfine.core.decision import correct
from advfine.core.evaluate import Suite, divergence, evaluate_deployed, evaluate_model, robustness_curve, run_suite
from advfine.core.models import build_model, default_arch
from advfine.core.train import train_model

from conftest import FIXTURE_SEED, FIXTURE_TRAINING, tiny_config, train_settings

CPU = torch.device("cpu")
AUDIT = {"tolerance": 0.01, "large_eps": 0.5, "large_eps_max_standing": 0.01, "more_steps_factor": 2, "more_effort_samples": 1000,
         "more_restarts": 1, "zero_gradient_max_share": 0.05}


@pytest.fixture(scope="module")
def digits():
    return load_dataset(tiny_config(**{"data.test_subset": 200})["data"])


@pytest.fixture(scope="module")
def trained(digits):
    """A CNN8 standard-trained for 4 epochs on 512 digits (91-95 % clean over seeds)."""
    torch.manual_seed(FIXTURE_SEED)
    model = build_model(default_arch("cnn8", 1, 10, 28, digits.mean, digits.std))
    train_model(model, digits.train_x, digits.train_y, train_settings(epochs=4, **FIXTURE_TRAINING), None,
                FIXTURE_SEED, CPU)
    return model.eval()


def suite(eps=0.05, attacks=("pgd", "apgd_ce", "apgd_t", "square"), **over) -> Suite:
    settings = dict(apgd_steps=20, target_classes=3, fab_steps=20, square_queries=300) | over
    return Suite(pgd=PGDAttack(ThreatModel("linf", eps), step_size=eps / 4, steps=20), attacks=attacks, **settings)


class RoundInput(nn.Module):
    """Rounds the image to steps of 1/10 before the model: the rounding has a zero gradient almost
    everywhere, the textbook gradient-masking layer, while eps = 0.1 can still move a pixel a step."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 10) / 10)


def test_every_attack_stays_in_the_eps_ball_and_the_image_range(trained, digits):
    x, y = digits.test_x[:32], digits.test_y[:32]
    ball = ThreatModel("linf", 0.05)
    g = torch.Generator().manual_seed(0)
    outputs = {"apgd_ce": apgd(trained, x, y, ball, 10, "ce", generator=g)[0],
               "apgd_t": apgd(trained, x, y, ball, 10, "dlr-targeted", top_k_targets(trained(x), 2), generator=g)[0],
               "square": square_linf(trained, x, y, ball, 50, generator=g)[0],
               "fab_t": fab_t(trained, x, y, ball, 10, 2, 10, seed=0)}
    for name, x_adv in outputs.items():
        assert ball.contains(x_adv, x).all(), name
        assert (x_adv - x).abs().max() > 0, name  # they moved


def test_losses_and_schedules_match_their_definitions():
    logits = torch.tensor([[3.0, 1.0, 0.5, 0.0, -1.0]])
    y, t = torch.tensor([0]), torch.tensor([2])
    assert dlr_loss(logits, y).item() == pytest.approx(-(3.0 - 1.0) / (3.0 - 0.5))
    assert dlr_loss_targeted(logits, y, t).item() == pytest.approx(-(3.0 - 0.5) / (3.0 - 0.25))
    assert margin(logits, y).item() == 2.0 and margin(logits, torch.tensor([1])).item() == -2.0
    assert window_fraction(0, 5000) == 0.8 and window_fraction(50, 5000) == 0.2
    assert window_fraction(4999, 5000) == pytest.approx(0.8 / 512)


def test_apgd_is_at_least_as_strong_as_pgd20_and_agrees_with_torchattacks(trained, digits):
    x, y, eps = digits.test_x, digits.test_y, 0.04
    pgd = evaluate_model(trained, x, y, suite(eps, attacks=("pgd",)), 100, CPU, seed=0)["robust_acc"]
    ours = evaluate_model(trained, x, y, suite(eps, attacks=("pgd", "apgd_ce")), 100, CPU, seed=0)["attacks"]
    apgd_after = ours["apgd_ce"]["robust_acc_after"]
    assert apgd_after <= pgd
    # APGD-CE alone, ours vs torchattacks' at the same settings (20 steps, 1 restart), same model
    alone = []
    g = torch.Generator().manual_seed(1)
    x_adv, _ = apgd(trained, x, y, ThreatModel("linf", eps), 20, "ce", generator=g)
    alone.append((trained(x_adv).argmax(1) == y).float().mean().item())
    theirs = torchattacks.APGD(trained, norm="Linf", eps=eps, steps=20, n_restarts=1, loss="ce", seed=1)(x, y)
    alone.append((trained(theirs).argmax(1) == y).float().mean().item())
    assert 0.05 < alone[0] < 0.95  # a radius where the comparison means something
    assert abs(alone[0] - alone[1]) <= 0.04, alone  # 200 images: 2 standard errors of the difference


def test_a_normal_model_falls_to_zero_at_a_large_radius_and_passes_the_audit(trained, digits):
    x, y = digits.test_x, digits.test_y
    s = suite(0.05)
    result = evaluate_model(trained, x, y, s, 100, CPU, seed=0)
    report = audit_evaluation(trained, x, y, result, s, AUDIT, 100, CPU, seed=0)
    assert report["checks"]["large_eps_standing"] == 0.0
    assert report["checks"]["zero_gradient_share"] == 0.0
    assert report["flags"] == []
    assert 0 <= result["robust_acc"] <= result["robust_acc_whitebox"] <= result["robust_acc_pgd"] <= result["clean_acc"]


def test_a_gradient_masking_model_is_flagged_and_square_breaks_what_pgd_could_not(trained, digits):
    x, y = digits.test_x, digits.test_y
    masked = RoundInput(trained).eval()
    s = suite(0.1, attacks=("pgd", "apgd_ce", "square"), square_queries=500)
    result = evaluate_model(masked, x, y, s, 100, CPU, seed=0)
    gradient_free = result["attacks"]["square"]["broken"] / len(y)
    assert result["robust_acc_whitebox"] - result["robust_acc"] == pytest.approx(gradient_free)
    assert gradient_free > 0.2  # the black-box attack breaks many samples the gradient attacks left
    report = audit_evaluation(masked, x, y, result, s, AUDIT, 100, CPU, seed=0)
    assert report["checks"]["zero_gradient_share"] == 1.0
    assert {"gradient_free_gain", "zero_gradient_share", "large_eps_standing"} <= set(report["flags"])
    assert zero_gradient_share(trained, x, y, torch.ones(len(y), dtype=torch.bool), 100, CPU) == 0.0


def test_the_transfer_attack_runs_only_with_a_float_twin_and_judges_the_model(trained, digits):
    x, y = digits.test_x[:64], digits.test_y[:64]
    s = suite(0.05, attacks=("pgd", "transfer"))
    without = evaluate_model(trained, x, y, s, 64, CPU, seed=0)
    assert without["attack_order"] == ["pgd"]
    with_twin = evaluate_model(RoundInput(trained), x, y, s, 64, CPU, seed=0, float_twin=trained)
    assert with_twin["attack_order"] == ["pgd", "transfer"] and with_twin["attacks"]["transfer"]["broken"] > 0
    deployed = evaluate_deployed(RoundInput(trained), trained, x, y, suite(0.05, attacks=("pgd", "transfer")), 64, 0)
    assert 0 <= deployed["robust_acc"] < 1 and set(deployed["attacks"]) == {"transfer"}


def test_the_deployed_model_faces_the_points_that_broke_the_model_it_was_converted_from(trained, digits):
    """The real INT8 model's transfer attack tries the fake-quant model's adversarial points first: with the
    same model on both sides, every sample the evaluation broke is broken again by its own point, so the
    deployed number can never read higher than the evaluated one."""
    x, y = digits.test_x[:64], digits.test_y[:64]
    s = suite(0.05, attacks=("pgd", "apgd_ce", "transfer"))
    model = RoundInput(trained)
    evaluated = evaluate_model(model, x, y, s, 64, CPU, seed=0, float_twin=trained)
    outcome = evaluated["per_sample"]
    broken = outcome["broken_by"] >= 0
    assert broken.any() and s.threat.contains(outcome["points"], x).all()
    assert torch.equal(outcome["points"][~broken], x[~broken])  # unbroken samples keep their clean image
    assert not correct(model(outcome["points"][broken]), y[broken]).any()
    deployed = evaluate_deployed(model, trained, x, y, s, 64, 0, fake_quant_outcome=outcome)
    transfer = deployed["attacks"]["transfer"]
    assert transfer["from_fake_quant_points"] == int(broken.sum())
    assert transfer["attacked"] == int(outcome["clean_ok"].sum())
    assert deployed["robust_acc"] <= evaluated["robust_acc"]
    alone = evaluate_deployed(model, trained, x, y, s, 64, 0)  # only PGD on the float twin: never stronger
    assert deployed["robust_acc"] <= alone["robust_acc"] and "from_fake_quant_points" not in alone["attacks"]["transfer"]


def test_the_real_int8_model_can_be_attacked_on_a_fixed_subset_beside_the_fake_quant_number_on_it(trained, digits):
    """evaluate.int8_robust_images: the deployed model's attacks run on a fixed random subset (the same for
    one seed), its robust accuracy is over that subset and the fake-quant model's is given on the same
    samples; with no subset nothing changes."""
    x, y = digits.test_x[:64], digits.test_y[:64]
    s = suite(0.05, attacks=("pgd", "transfer", "square"))
    model = RoundInput(trained)
    outcome = evaluate_model(model, x, y, s, 64, CPU, seed=0, float_twin=trained)["per_sample"]
    every = evaluate_deployed(model, trained, x, y, s, 64, 0, fake_quant_outcome=outcome)
    part = evaluate_deployed(model, trained, x, y, s, 64, 0, fake_quant_outcome=outcome, robust_images=20)
    assert every["robust_images"] == 64 and every["per_sample"]["attacked"].all()
    attacked = part["per_sample"]["attacked"]
    assert part["robust_images"] == int(attacked.sum()) == 20
    assert torch.equal(attacked, evaluate_deployed(model, trained, x, y, s, 64, 0, robust_images=20)["per_sample"]
                       ["attacked"])  # the subset depends on the seed only
    assert torch.equal(part["per_sample"]["clean_ok"], every["per_sample"]["clean_ok"])  # clean: every sample
    assert (part["per_sample"]["broken_by"][~attacked] == -1).all()
    robust = part["per_sample"]["clean_ok"] & (part["per_sample"]["broken_by"] < 0)
    assert part["robust_acc"] == pytest.approx(robust[attacked].float().mean().item())
    fake_quant_robust = outcome["clean_ok"] & (outcome["broken_by"] < 0)
    assert part["fake_quant_robust_acc"] == pytest.approx(fake_quant_robust[attacked].float().mean().item())
    assert every["fake_quant_robust_acc"] == pytest.approx(fake_quant_robust.float().mean().item())
    assert all(record["attacked"] <= 20 for record in part["attacks"].values())


def test_the_robustness_curve_falls_with_eps_and_is_no_weaker_than_each_radius_alone(trained, digits):
    x, y = digits.test_x[:100], digits.test_y[:100]
    clean_ok = trained(x).argmax(1) == y
    fractions = [0, 1, 0.5, 4]  # given out of order: the curve keeps the order, attacks from the smallest up
    curve = robustness_curve(trained, x, y, clean_ok, suite(0.05), fractions, 100, CPU, seed=0)
    assert [p["eps_pixel"] for p in curve] == [0.0, 0.05, 0.025, 0.2]
    values = dict(zip(fractions, (point["robust_acc"] for point in curve)))
    assert values[0] == clean_ok.float().mean().item() and values[0] >= values[0.5] >= values[1] >= values[4]
    assert values[4] <= 0.02
    for fraction in (0.5, 1):  # the cascade over nested balls is at least as strong as APGD-CE at one radius
        broken_by, _ = run_suite(trained, x, y, clean_ok, suite(0.05 * fraction), 100, CPU, seed=0, names=("apgd_ce",))
        assert values[fraction] <= (clean_ok & (broken_by < 0)).float().mean().item()


def test_a_diverged_model_is_told_apart(trained, digits):
    assert divergence(trained, digits.test_x[:8], 8, CPU) is None
    broken = build_model(default_arch("cnn8", 1, 10, 28, [0.5], [0.5]))
    with torch.no_grad():
        broken.fc2.weight[0, 0] = float("nan")
    assert "fc2.weight" in divergence(broken, digits.test_x[:8], 8, CPU)
    huge = build_model(default_arch("cnn8", 1, 10, 28, [0.5], [0.5]))
    with torch.no_grad():
        for p in huge.parameters():
            p.mul_(1e12)
    assert "logits" in divergence(huge, digits.test_x[:8], 8, CPU)


def test_suites_refuse_unknown_or_reordered_attacks():
    attack = PGDAttack(ThreatModel("linf", 0.1), step_size=0.01, steps=3)
    for attacks in (("apgd_ce",), ("pgd", "square", "apgd_ce"), ("pgd", "cw")):
        with pytest.raises(ValueError, match="pgd"):
            Suite(pgd=attack, attacks=attacks)
