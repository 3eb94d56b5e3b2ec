"""benchmarks/autoattack_agreement.py: the official AutoAttack (pyautoattack) on a CNN8 trained on real digits,
its points judged by our decision rule and compared per sample with our suite's verdict; the whole benchmark on
the tiny workflow's results tree."""
from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch

from advfine.core.attacks.pgd import PGDAttack
from advfine.core.attacks.threat import ThreatModel
from advfine.core.datasets import load_dataset
from advfine.core.evaluate import Escalation, Suite, escalate, evaluate_model
from advfine.core.models import build_model
from advfine.core.train import train_model
from advfine.pipeline.config import resolve_config

from conftest import FIXTURE_SEED, FIXTURE_TRAINING, REPO, small_cnn8_arch, tiny_config, train_settings

sys.path.insert(0, str(REPO / "benchmarks"))
import autoattack_agreement as agreement  # noqa: E402  (a script of benchmarks/, not a package module)

CPU = torch.device("cpu")
EPS = 0.05  # a radius where a standard-trained digits CNN keeps some samples, so every attack has work
N_IMAGES = 64


@pytest.fixture(scope="module")
def digits():
    return load_dataset(tiny_config(**{"data.test_subset": 100})["data"])


@pytest.fixture(scope="module")
def trained(digits):
    """A narrow CNN8 standard-trained for 3 epochs on 512 digits (a second of training; AutoAttack's cost is
    its fixed number of steps, each the faster for a small model)."""
    torch.manual_seed(FIXTURE_SEED)
    model = build_model(small_cnn8_arch(digits.mean, digits.std))
    train_model(model, digits.train_x, digits.train_y, train_settings(epochs=3, **FIXTURE_TRAINING), None,
                FIXTURE_SEED, CPU)
    return model.eval()


def autoattack_like_suite(threat: ThreatModel, steps: int, square_queries: int,
                          attacks=("pgd", "apgd_ce", "apgd_t", "fab_t", "square")) -> Suite:
    """Our suite with AutoAttack's attacks (APGD-CE, APGD-T and FAB-T on 9 targets, Square)."""
    return Suite(pgd=PGDAttack(threat, step_size=threat.eps / 4, steps=10), attacks=attacks, apgd_steps=steps,
                 target_classes=9, fab_steps=steps, square_queries=square_queries)


def ours_and_autoattack(model, x, y, threat, suite, aa_attacks=None):
    ours = evaluate_model(model, x, y, suite, 100, CPU, seed=0)["per_sample"]
    ours_robust = ours["clean_ok"] & (ours["broken_by"] < 0)
    x_adv, y_adv = agreement.run_autoattack(model, x, y, threat, CPU, seed=0, batch_size=100, attacks=aa_attacks)
    judged = agreement.judge(model, x, y, x_adv, y_adv, threat, CPU)
    return ours_robust, x_adv, judged


@pytest.fixture(scope="module")
def compared(trained, digits):
    x, y = digits.test_x[:N_IMAGES], digits.test_y[:N_IMAGES]
    threat = ThreatModel("linf", EPS)
    # AutoAttack's gradient attacks at their standard settings; FAB-T and Square's 5000 queries take a minute
    suite = autoattack_like_suite(threat, steps=25, square_queries=300, attacks=("pgd", "apgd_ce", "apgd_t", "square"))
    ours_robust, x_adv, judged = ours_and_autoattack(trained, x, y, threat, suite, ("apgd-ce", "apgd-t"))
    return x, y, threat, ours_robust, x_adv, judged


def test_autoattack_points_lie_in_the_threat_model_and_only_broken_samples_move(compared):
    x, _, threat, _, x_adv, judged = compared
    assert threat.contains(x_adv, x).all() and judged["inside"].all()
    moved = (x_adv != x).flatten(1).any(1)
    # AutoAttack returns the clean image where it failed: a moved sample is one its argmax rule counts broken
    assert not (moved & judged["robust_argmax"]).any()
    assert moved.any()  # it broke something at this radius


def test_our_rule_is_never_kinder_than_autoattack_argmax(compared):
    """The strict rule counts a tie as an error: whatever AutoAttack's argmax breaks, it breaks too."""
    _, _, _, _, _, judged = compared
    assert not (judged["robust"] & ~judged["robust_argmax"]).any()
    assert not (judged["robust"] & ~judged["clean_ok"]).any()


def test_the_row_counts_agree_with_the_per_sample_vectors(compared):
    _, _, _, ours_robust, _, judged = compared
    row = agreement.compare("node", ours_robust, judged, wall_s=1.0)
    assert list(row) == agreement.COLUMNS
    n = len(ours_robust)
    assert row["n_images"] == n == N_IMAGES
    assert row["aa_only"] == int((ours_robust & ~judged["robust"]).sum())
    assert row["ours_only"] == int((~ours_robust & judged["robust"]).sum())
    assert 0 <= row["aa_only_ties"] <= row["aa_only"] and row["outside"] == 0
    assert row["gap_points"] == pytest.approx(100.0 * (row["aa_only"] - row["ours_only"]) / n)
    assert row["ours_robust_pct"] - row["aa_robust_pct"] == pytest.approx(row["gap_points"])
    assert row["aa_robust_pct"] <= row["aa_argmax_robust_pct"]


def test_compare_counts_ties_and_one_sided_breaks():
    ours = torch.tensor([True, True, True, False, False])
    judged = {"robust": torch.tensor([True, False, False, True, False]),
              "robust_argmax": torch.tensor([True, True, False, True, False]),
              "tie": torch.tensor([False, True, False, False, False]),
              "inside": torch.ones(5, dtype=torch.bool), "clean_ok": torch.ones(5, dtype=torch.bool)}
    row = agreement.compare("n", ours, judged)
    assert (row["aa_only"], row["aa_only_ties"], row["ours_only"]) == (2, 1, 1)
    assert row["gap_points"] == pytest.approx(60.0 - 40.0)
    assert row["aa_argmax_robust_pct"] == pytest.approx(60.0)


def test_a_gap_of_exactly_one_point_is_one_point():
    # 55 and 53 robust of 200: 27.5 % against 26.5 %, a gap of 1 point that float32 means would make 1.0000002
    ours = torch.arange(200) < 55
    judged = {"robust": torch.arange(200) < 53, "robust_argmax": torch.arange(200) < 53,
              "tie": torch.zeros(200, dtype=torch.bool), "inside": torch.ones(200, dtype=torch.bool),
              "clean_ok": torch.ones(200, dtype=torch.bool)}
    assert agreement.compare("n", ours, judged)["gap_points"] == 1.0


def test_judge_counts_a_point_outside_the_threat_model_for_the_model():
    """A point outside the ball does not count against the model; an exact tie at a point inside does."""
    model = torch.nn.Flatten()  # logits = the two pixels
    x = torch.tensor([[0.6, 0.4], [0.6, 0.4], [0.6, 0.4]])
    y = torch.zeros(3, dtype=torch.long)
    x_adv = torch.tensor([[0.0, 1.0], [0.5, 0.5], [0.6, 0.4]])  # outside, a tie inside, unmoved
    judged = agreement.judge(model, x, y, x_adv, torch.tensor([1, 0, 0]), ThreatModel("linf", 0.1), CPU)
    assert judged["inside"].tolist() == [False, True, True]
    assert judged["robust"].tolist() == [True, False, True]
    assert judged["robust_argmax"].tolist() == [False, True, True]
    assert judged["tie"].tolist() == [False, True, False]


@pytest.mark.slow
def test_the_default_runs_evaluation_is_within_one_point_of_autoattack(trained, digits):
    """config.yaml's suite and escalation, as the evaluate stage runs them (the radius set to EPS, where this
    standard-trained model keeps some samples), against AutoAttack's APGD-CE and APGD-T: the check of
    benchmarks/autoattack_agreement.py on a small model, so that a lighter default cannot slip back in."""
    config = resolve_config([REPO / "config.yaml"], {"attack": {"eval": {"eps": EPS, "step_size": EPS / 4}}}, REPO)
    suite = Suite.from_config(config["attack"], config["evaluate"])
    escalation = Escalation.from_config(config["attack"], config["evaluate"])
    assert escalation.reasons(quantized=False, flags=[]) == ["always"]  # the default escalates every node
    x, y = digits.test_x, digits.test_y
    result = evaluate_model(trained, x, y, suite, 100, CPU, seed=0)
    outcome, _ = escalate(trained, x, y, result["per_sample"], escalation.steps, 100, CPU, seed=0)
    ours_robust = outcome["clean_ok"] & (outcome["broken_by"] < 0)
    x_adv, y_adv = agreement.run_autoattack(trained, x, y, suite.threat, CPU, seed=0, batch_size=100,
                                            attacks=("apgd-ce", "apgd-t"))
    judged = agreement.judge(trained, x, y, x_adv, y_adv, suite.threat, CPU)
    row = agreement.compare("node", ours_robust, judged, attacks="apgd-ce+apgd-t")
    assert 5 <= int(ours_robust.sum()) and row["aa_robust_pct"] < 95  # both had work: neither side is trivial
    assert row["gap_points"] <= 1.0, row


@pytest.mark.slow
def test_the_benchmark_runs_on_a_results_tree(finished_run, tmp_path):
    out = tmp_path / "agreement.csv"
    nodes = ["ptq-int8/ft-none", "ft-scratch"]  # quantized nodes, and the run's collapsed from-scratch arms
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "autoattack_agreement.py"), str(finished_run),
                             "--nodes", *nodes, "--n-images", "16", "--attacks", "apgd-ce", "apgd-t",
                             "--out", str(out)],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    assert "the first 16" in result.stdout and "only apgd-ce + apgd-t" in result.stdout
    assert "skipped" in result.stdout and "collapsed" in result.stdout  # the tiny run's from-scratch arm
    rows = list(csv.DictReader(out.open()))
    evaluated = agreement.evaluated_nodes(finished_run, substrings=nodes)
    assert rows and len(rows) == len(evaluated) - result.stdout.count("skipped ")
    assert list(rows[0]) == agreement.COLUMNS
    assert all(int(row["n_images"]) == 16 and int(row["outside"]) == 0 for row in rows)
    assert {row["attacks"] for row in rows} == {"apgd-ce+apgd-t"}
    failed = [row["node"] for row in rows if float(row["gap_points"]) > 1.0]
    assert (result.returncode == 1) == bool(failed)


def test_run_autoattack_refuses_an_attack_outside_the_version(trained, digits):
    with pytest.raises(ValueError, match="apgd-dlr"):
        agreement.run_autoattack(trained, digits.test_x[:4], digits.test_y[:4], ThreatModel("linf", EPS), CPU,
                                 attacks=("apgd-ce", "apgd-dlr"))
