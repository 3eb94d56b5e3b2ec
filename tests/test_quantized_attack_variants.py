"""benchmarks/quantized_attack_variants.py: variants of our APGD (and AutoAttack's APGD) on the samples a
node's evaluation left standing, the measurement behind the default escalation steps."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from advfine.core.attacks.threat import ThreatModel
from advfine.core.decision import correct

from conftest import REPO
from test_autoattack_agreement import EPS, digits, trained  # noqa: F401  (module fixtures reused)

sys.path.insert(0, str(REPO / "benchmarks"))
import quantized_attack_variants as variants  # noqa: E402


@pytest.fixture(scope="module")
def clean_correct(trained, digits):  # noqa: F811
    x, y = digits.test_x[:64], digits.test_y[:64]
    with torch.no_grad():
        ok = correct(trained(x), y)
    return x[ok], y[ok]


def test_more_restarts_break_a_superset(trained, clean_correct):  # noqa: F811
    """Restart 1 of three is the one-restart run (same seed, same first start): later restarts only add."""
    x, y = clean_correct
    threat = ThreatModel("linf", EPS)
    one = variants.broken_by_variant(trained, x, y, threat, "ce:10:1", seed=0)
    three = variants.broken_by_variant(trained, x, y, threat, "ce:10:3", seed=0)
    assert one.any() and not (one & ~three).any()
    assert three.sum() >= one.sum()


def test_every_kind_of_variant_breaks_something_at_this_radius(trained, clean_correct):  # noqa: F811
    x, y = clean_correct
    threat = ThreatModel("linf", EPS)
    for variant in ("ce:10:1", "dlr:10:1", "apgd_t:10:1:3", "aa:10:1:2"):
        assert variants.broken_by_variant(trained, x, y, threat, variant, seed=0).any(), variant


def test_a_malformed_variant_is_refused_with_its_text():
    with pytest.raises(SystemExit, match="pgd:10"):
        variants.parse_variant("pgd:10:1")
    with pytest.raises(SystemExit, match="ce:10'"):
        variants.parse_variant("ce:10")


@pytest.mark.slow
def test_the_benchmark_runs_on_a_results_tree(finished_run):
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "quantized_attack_variants.py"),
                             str(finished_run), "--nodes", "ptq-int8/ft-none", "--n-images", "16", "--aa",
                             "--variants", "ce:5:2", "apgd_t:5:1:2"],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if "standing" in line]
    attacked = [line for line in lines if "nothing to attack" not in line]
    assert lines and all("AutoAttack APGD:" in line and "ce:5:2:" in line and "apgd_t:5:1:2:" in line
                         for line in attacked)
    assert all(line.split(": ")[1].startswith("0 of") for line in lines if line not in attacked)
