"""The threat model every attack takes: its ball in L-inf and L2, the valid image range, the random start, the
steepest-ascent step, the containment check, eps scaling and the config it is built from."""
from __future__ import annotations

import pytest
import torch

from advfine.core.attacks.pgd import PGDAttack
from advfine.core.attacks.threat import BOUND_TOLERANCE, ThreatModel

from conftest import tiny_config

NORMS = {"linf": lambda t: t.flatten(1).abs().amax(1), "l2": lambda t: t.flatten(1).norm(dim=1)}
RADII = {"linf": 0.1, "l2": 1.0}  # pixel units on 1 x 8 x 8 images


def images(seed: int = 0, n: int = 64) -> torch.Tensor:
    """Images in [0, 1] with pixels at both ends of the range, as real digits have."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g).mul(1.4).sub(0.2).clamp(0, 1)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_projection_lands_in_the_ball_and_the_range_and_keeps_points_inside(norm, seed):
    threat = ThreatModel(norm, RADII[norm])
    x = images(seed)
    far = x + 5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 10))
    projected = threat.project(far, x)
    assert (NORMS[norm](projected - x) <= threat.eps + 1e-6).all()
    assert projected.min() >= 0 and projected.max() <= 1
    assert threat.contains(projected, x).all()
    # the projection reaches the boundary: an unclamped far point lands on the sphere (L2) or the cube (L-inf)
    unclamped = ThreatModel(norm, RADII[norm], clamp=False).project(far, x)
    assert torch.allclose(NORMS[norm](unclamped - x), torch.full((len(x),), threat.eps), rtol=1e-5)
    assert unclamped.min() < 0 or unclamped.max() > 1  # without clamping it leaves [0, 1]
    near = x + 0.01 * (projected - x)  # inside the ball and (by convexity) in [0, 1]: not moved
    assert torch.allclose(threat.project(near, x), near, atol=1e-7)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_random_start_lies_in_the_threat_model_and_spreads_over_it(norm, seed):
    threat = ThreatModel(norm, RADII[norm])
    x = images(seed)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed + 20))
    start = threat.random_start(x, noise)
    assert threat.contains(start, x).all() and start.min() >= 0 and start.max() <= 1
    assert not torch.equal(start, x)
    free = ThreatModel(norm, RADII[norm], clamp=False).random_start(x, noise)
    distance = NORMS[norm](free - x)
    if norm == "l2":  # on the sphere of radius eps
        assert torch.allclose(distance, torch.full((len(x),), threat.eps), rtol=1e-5)
    else:  # uniform in the cube: some pixel of each image moves most of eps, and pixels move both ways
        assert (distance > 0.8 * threat.eps).all() and (distance <= threat.eps + 1e-7).all()
        assert (free - x).min() < 0 < (free - x).max()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_the_ascent_step_has_the_steps_length_in_its_norm(norm):
    threat = ThreatModel(norm, RADII[norm])
    grad = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    step = threat.ascent_step(grad, 0.25)
    assert torch.allclose(NORMS[norm](step), torch.full((16,), 0.25), rtol=1e-5)
    assert ((step * grad) >= 0).all()  # it ascends: every coordinate moves along its gradient
    per_sample = threat.ascent_step(grad, torch.linspace(0.1, 0.4, 16).view(-1, 1, 1, 1))
    assert torch.allclose(NORMS[norm](per_sample), torch.linspace(0.1, 0.4, 16), rtol=1e-5)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_containment_allows_float_slack_only(norm):
    eps = RADII[norm]
    x = images(3, n=4)
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    unit = direction / NORMS[norm](direction).view(-1, 1, 1, 1)
    unclamped = ThreatModel(norm, eps, clamp=False)
    assert unclamped.contains(x + eps * unit, x).all()  # on the sphere
    assert not unclamped.contains(x + (eps + 20 * BOUND_TOLERANCE) * unit, x).any()
    # in the ball but out of [0, 1]: refused only when images are kept in [0, 1]
    out_of_range = x.clone()
    out_of_range[:, 0, 0, 0] = -0.05
    assert not ThreatModel(norm, 10.0).contains(out_of_range, x).any()
    assert ThreatModel(norm, 10.0, clamp=False).contains(out_of_range, x).all()
    assert ThreatModel(norm, eps).contains(x, x).all()


def test_scaling_scales_eps_only_and_pgd_scales_its_step_too():
    threat = ThreatModel("l2", 1.0, clamp=False)
    half = threat.scaled(0.5)
    assert half == ThreatModel("l2", 0.5, clamp=False)
    attack = PGDAttack(threat, step_size=0.25, steps=3).scaled(0.5)
    assert attack.threat == half and attack.step_size == 0.125 and attack.steps == 3


@pytest.mark.parametrize("which", ["train", "eval"])
def test_from_config_reads_eps_in_its_space_and_norm(which):
    radius = {f"attack.{which}.eps": 0.2, f"attack.{which}.step_size": 0.1}
    pixel = ThreatModel.from_config(tiny_config(**radius)["attack"], which)
    assert pixel == ThreatModel("linf", 0.2, clamp=True)
    faithful_config = tiny_config(**radius, **{"attack.eps_space": "paper_faithful"})["attack"]
    faithful = ThreatModel.from_config(faithful_config, which)
    # the reference code's eps is measured after normalizing with std 0.5, and it never clamps
    assert faithful == ThreatModel("linf", 0.1, clamp=False)
    assert faithful.describe() == {"norm": "linf", "eps": 0.2, "eps_space": "paper_faithful", "eps_pixel": 0.1,
                                   "clamped_to_valid_range": False}
    attack = PGDAttack.from_config(faithful_config, which)
    assert attack.threat == faithful and attack.step_size == 0.05
    assert attack.describe()["step_size"] == 0.1 and attack.describe()["step_size_pixel"] == 0.05
    l2 = ThreatModel.from_config(tiny_config(**{"attack.norm": "l2", f"attack.{which}.eps": 1.5,
                                                f"attack.{which}.step_size": 0.75})["attack"], which)
    assert l2 == ThreatModel("l2", 1.5) and l2.describe()["eps_pixel"] == 1.5 and l2.describe()["eps_space"] == "pixel"


def test_a_threat_model_refuses_unknown_norms_and_eps_spaces():
    with pytest.raises(ValueError, match="norm"):
        ThreatModel("l1", 0.1)
    with pytest.raises(ValueError, match="eps_space"):
        ThreatModel.from_config({"eps_space": "normalized", "norm": "linf", "eval": {"eps": 0.1}}, "eval")
    with pytest.raises(ValueError, match="norm"):
        ThreatModel.from_config({"eps_space": "pixel", "norm": "l0", "eval": {"eps": 0.1}}, "eval")


def test_records_give_eps_in_the_configs_units_exactly():
    """The paper-faithful records report the configured eps and step size, not a rounded round trip."""
    for eps in (0.1, 0.3, 8 / 255, 0.031, 2 / 3):
        config = {"eps_space": "paper_faithful", "norm": "linf",
                  "eval": {"eps": eps, "step_size": eps / 7, "steps": 1, "random_start": True}}
        attack = PGDAttack.from_config(config, "eval")
        for factor in (1.0, 0.5, 1 / 3):
            scaled = attack.scaled(factor)
            assert scaled.describe()["eps"] == eps * factor and scaled.threat.config_eps == eps * factor
            assert scaled.describe()["step_size"] == eps / 7 * factor
