"""Paired statistics of ``advfine.report.paired``: McNemar, the two-level bootstrap, verdicts, compare."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from advfine.report.paired import compare, mcnemar_exact, paired_bootstrap, read_outcome, verdict


def correct_at(rng: np.random.Generator, shape: tuple[int, int], accuracy: float) -> np.ndarray:
    return rng.random(shape) < accuracy


def a_better_on(b: np.ndarray, per_seed: int, rng: np.random.Generator) -> np.ndarray:
    """A copy of b made correct on ``per_seed`` samples of each seed where b is wrong (never worse)."""
    a = b.copy()
    for row in a:
        wrong = np.flatnonzero(~row)
        row[rng.choice(wrong, size=per_seed, replace=False)] = True
    return a


# --- mcnemar_exact ---------------------------------------------------------------------------------------

def test_mcnemar_counts_and_p_value_match_binomtest():
    # 3 pairs (1, 0), 9 pairs (0, 1), 5 pairs (1, 1), 4 pairs (0, 0)
    a = np.array([1] * 3 + [0] * 9 + [1] * 5 + [0] * 4, dtype=bool)
    b = np.array([0] * 3 + [1] * 9 + [1] * 5 + [0] * 4, dtype=bool)
    result = mcnemar_exact(a, b)
    assert result["n10"] == 3 and result["n01"] == 9
    assert result["p_value"] == pytest.approx(binomtest(3, 12, 0.5).pvalue)
    assert 0.1 < result["p_value"] < 0.2  # 2 * P(X <= 3), X ~ Bin(12, 1/2) = 0.146
    swapped = mcnemar_exact(b, a)
    assert (swapped["n10"], swapped["n01"]) == (9, 3)
    assert swapped["p_value"] == pytest.approx(result["p_value"])


def test_mcnemar_without_discordant_pairs_has_p_one():
    a = np.array([True, False, True, True])
    assert mcnemar_exact(a, a.copy()) == {"n01": 0, "n10": 0, "p_value": 1.0}


def test_mcnemar_rejects_length_mismatch_and_2d():
    with pytest.raises(ValueError, match="same length"):
        mcnemar_exact(np.ones(3, bool), np.ones(4, bool))
    with pytest.raises(ValueError, match="1-D"):
        mcnemar_exact(np.ones((2, 3), bool), np.ones((2, 3), bool))


# --- paired_bootstrap ------------------------------------------------------------------------------------

def test_bootstrap_identical_models_give_zero():
    a = correct_at(np.random.default_rng(0), (3, 500), 0.7)
    result = paired_bootstrap(a, a.copy(), n_boot=500)
    assert result == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n_seeds": 3, "n_samples": 500}


def test_bootstrap_detects_a_consistent_five_point_gain():
    rng = np.random.default_rng(1)
    b = correct_at(rng, (3, 2000), 0.7)
    a = a_better_on(b, per_seed=100, rng=rng)  # 5 % of 2000 in each seed
    result = paired_bootstrap(a, b)
    assert result["diff"] == pytest.approx(5.0)
    assert 0 < result["ci_low"] < 5.0 < result["ci_high"] < 10.0
    assert result["ci_low"] > 3.5  # sd of the paired mean is about 0.28 points


def test_bootstrap_of_pure_noise_contains_zero():
    rng = np.random.default_rng(2)
    a, b = correct_at(rng, (3, 2000), 0.7), correct_at(rng, (3, 2000), 0.7)
    result = paired_bootstrap(a, b)
    assert result["ci_low"] < 0 < result["ci_high"]
    assert result["ci_low"] < result["diff"] < result["ci_high"]


def test_bootstrap_sample_level_width_matches_the_standard_error():
    # One seed: only the sample level varies. Paired differences are +1 on 10 % of 1000 samples and 0
    # elsewhere, so the mean difference has sd sqrt(0.1 * 0.9 / 1000) = 0.949 points.
    diff = np.zeros(1000, bool)
    diff[:100] = True
    b = np.zeros((1, 1000), bool)
    result = paired_bootstrap(diff[None, :], b, n_boot=4000)
    expected_width = 2 * 1.96 * math.sqrt(0.1 * 0.9 / 1000) * 100
    assert result["diff"] == pytest.approx(10.0)
    assert result["ci_high"] - result["ci_low"] == pytest.approx(expected_width, rel=0.1)


def test_bootstrap_resamples_seeds():
    # Seed 0: A better by 10 points; seed 1: B better by 10. The samples alone would give a tight
    # interval around 0; resampling seeds draws (0, 0) and (1, 1) a quarter of the time each.
    rng = np.random.default_rng(3)
    b = correct_at(rng, (2, 2000), 0.6)
    a = b.copy()
    a[0] = a_better_on(b[:1], per_seed=200, rng=rng)[0]
    a[1] = b[1]
    b[1] = a_better_on(a[1:2], per_seed=200, rng=rng)[0]
    result = paired_bootstrap(a, b)
    assert result["diff"] == pytest.approx(0.0)
    assert result["ci_low"] < -8 and result["ci_high"] > 8


def test_pairing_narrows_the_interval():
    rng = np.random.default_rng(4)
    a = correct_at(rng, (3, 2000), 0.8)
    b = a.copy()
    for row in b:  # b = a with 1 % of the samples flipped to wrong
        row[rng.choice(np.flatnonzero(row), size=20, replace=False)] = False
    unpaired_b = np.stack([rng.permutation(row) for row in b])  # same accuracy per seed, pairing lost
    paired = paired_bootstrap(a, b)
    unpaired = paired_bootstrap(a, unpaired_b)
    assert paired["diff"] == pytest.approx(unpaired["diff"]) == pytest.approx(1.0)
    assert paired["ci_low"] > 0
    assert paired["ci_high"] - paired["ci_low"] < (unpaired["ci_high"] - unpaired["ci_low"]) / 3


def test_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(5)
    a, b = correct_at(rng, (3, 300), 0.7), correct_at(rng, (3, 300), 0.6)
    assert paired_bootstrap(a, b, n_boot=300, seed=7) == paired_bootstrap(a, b, n_boot=300, seed=7)
    assert paired_bootstrap(a, b, n_boot=300, seed=7) != paired_bootstrap(a, b, n_boot=300, seed=8)


def test_bootstrap_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        paired_bootstrap(np.ones((2, 5), bool), np.ones((3, 5), bool))
    with pytest.raises(ValueError, match="2-D"):
        paired_bootstrap(np.ones(5, bool), np.ones(5, bool))


# --- verdict ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("ci_low", "ci_high", "expected"), [
    (0.1, 2.0, "confirmed"), (0.0, 2.0, "inconclusive"), (-1.0, 1.0, "inconclusive"),
    (-2.0, 0.0, "inconclusive"), (-2.0, -0.1, "refuted"),
])
def test_verdict_greater(ci_low, ci_high, expected):
    assert verdict(ci_low, ci_high, "greater", margin=1.0) == expected


@pytest.mark.parametrize(("ci_low", "ci_high", "expected"), [
    (-2.0, -0.1, "confirmed"), (-2.0, 0.0, "inconclusive"), (-1.0, 1.0, "inconclusive"),
    (0.0, 2.0, "inconclusive"), (0.1, 2.0, "refuted"),
])
def test_verdict_less(ci_low, ci_high, expected):
    assert verdict(ci_low, ci_high, "less", margin=1.0) == expected


@pytest.mark.parametrize(("ci_low", "ci_high", "margin", "expected"), [
    (-0.5, 0.5, 1.0, "confirmed"), (-1.0, 1.0, 1.0, "confirmed"), (-1.01, 0.5, 1.0, "inconclusive"),
    (-0.5, 1.01, 1.0, "inconclusive"), (0.5, 3.0, 1.0, "inconclusive"), (1.0, 3.0, 1.0, "inconclusive"),
    (1.01, 3.0, 1.0, "refuted"), (-3.0, -1.01, 1.0, "refuted"), (-3.0, 3.0, 1.0, "inconclusive"),
    (0.0, 0.0, 0.0, "inconclusive"),  # a zero margin can never be confirmed
])
def test_verdict_equivalent(ci_low, ci_high, margin, expected):
    assert verdict(ci_low, ci_high, "equivalent", margin=margin) == expected


def test_verdict_rejects_unknown_claims_and_bad_input():
    with pytest.raises(ValueError, match="greater, less, equivalent"):
        verdict(0.0, 1.0, "better", margin=1.0)
    with pytest.raises(ValueError, match="NaN"):
        verdict(math.nan, 1.0, "greater", margin=1.0)
    with pytest.raises(ValueError, match="above"):
        verdict(2.0, 1.0, "greater", margin=1.0)


# --- compare ---------------------------------------------------------------------------------------------

def test_compare_confirms_a_clear_gain_and_reports_mcnemar():
    rng = np.random.default_rng(6)
    b = correct_at(rng, (3, 2000), 0.7)
    a = a_better_on(b, per_seed=100, rng=rng)
    result = compare(list(a), list(b), "greater", n_boot=500)
    assert result["verdict"] == "confirmed"
    assert result["a_mean"] - result["b_mean"] == pytest.approx(result["diff"]) == pytest.approx(5.0)
    assert (result["n10"], result["n01"]) == (300, 0)
    assert result["mcnemar_p"] < 1e-50
    assert (result["n_seeds"], result["n_samples"], result["a_diverged"], result["b_diverged"]) == (3, 2000, 0, 0)
    assert compare(a, b, "less", n_boot=500)["verdict"] == "refuted"
    assert compare(a, b, "equivalent", margin=1.0, n_boot=500)["verdict"] == "refuted"


def test_compare_is_diverged_when_a_seed_has_no_outcome():
    rng = np.random.default_rng(7)
    b = list(correct_at(rng, (3, 100), 0.7))
    a = [b[0], None, b[2]]
    result = compare(a, b, "greater")
    assert result["verdict"] == "diverged"
    assert result["a_diverged"] == 1 and result["b_diverged"] == 0
    for key in ("diff", "ci_low", "ci_high", "a_mean", "b_mean", "mcnemar_p"):
        assert math.isnan(result[key]), key
    assert compare(b, a, "equivalent")["verdict"] == "diverged"


def test_compare_is_collapsed_when_a_seed_collapsed_and_diverged_wins():
    rng = np.random.default_rng(8)
    b = list(correct_at(rng, (3, 100), 0.7))
    a = list(correct_at(rng, (3, 100), 0.9))
    result = compare(a, b, "greater", a_collapsed=[False, False, False], b_collapsed=[False, True, False])
    assert result["verdict"] == "collapsed" and (result["a_collapsed"], result["b_collapsed"]) == (0, 1)
    for key in ("diff", "ci_low", "ci_high", "a_mean", "b_mean", "mcnemar_p"):
        assert math.isnan(result[key]), key
    healthy = compare(a, b, "greater", n_boot=200, a_collapsed=[False] * 3, b_collapsed=[False] * 3)
    assert healthy["verdict"] == "confirmed" and healthy["a_collapsed"] == healthy["b_collapsed"] == 0
    both = compare([a[0], None, a[2]], b, "greater", b_collapsed=[True, False, False])
    assert both["verdict"] == "diverged" and (both["a_diverged"], both["b_collapsed"]) == (1, 1)
    with pytest.raises(ValueError, match="a_collapsed: 2 collapsed flags for 3 seeds"):
        compare(a, b, "greater", a_collapsed=[False, True])


def test_compare_rejects_seed_count_mismatch_and_unknown_claim():
    rows = list(np.ones((3, 10), bool))
    with pytest.raises(ValueError, match="a has 3 seeds and b has 2"):
        compare(rows, rows[:2], "greater")
    with pytest.raises(ValueError, match="unknown claim"):
        compare(rows, rows, "bigger")


# --- read_outcome ----------------------------------------------------------------------------------------

def test_read_outcome_orders_by_index(tmp_path):
    path = tmp_path / "samples.csv"
    path.write_text("index,label,clean_correct,robust,broken_by,int8_clean_correct,int8_robust,int8_broken_by\n"
                    "5,1,1,0,pgd,1,0,apgd_ce\n"
                    "0,2,1,1,,1,1,\n"
                    "2,4,0,0,,1,0,pgd\n")
    np.testing.assert_array_equal(read_outcome(path).correct, [True, False, False])
    np.testing.assert_array_equal(read_outcome(path, "clean_correct").correct, [True, False, True])
    np.testing.assert_array_equal(read_outcome(path, "int8_clean_correct").correct, [True, True, True])
    assert read_outcome(path).correct.dtype == bool
    np.testing.assert_array_equal(read_outcome(path).index, [0, 2, 5])
    np.testing.assert_array_equal(read_outcome(path).labels, ["2", "4", "1"])


def test_read_outcome_of_a_diverged_model_is_none(tmp_path):
    path = tmp_path / "samples.csv"
    path.write_text("index,label,clean_correct,robust,broken_by\n0,2,,,\n1,3,,,\n")
    assert read_outcome(path) is None
    assert read_outcome(path, "clean_correct") is None


def test_read_outcome_errors_name_the_path_and_column(tmp_path):
    path = tmp_path / "samples.csv"
    path.write_text("index,label,clean_correct,robust,broken_by\n0,2,1,1,\n1,3,1,,\n")
    with pytest.raises(ValueError, match="int8_robust") as missing:
        read_outcome(path, "int8_robust")
    assert str(path) in str(missing.value)
    with pytest.raises(ValueError, match="empty"):
        read_outcome(path)  # partly empty: neither a result nor a diverged model
    with pytest.raises(FileNotFoundError, match="robust"):
        read_outcome(tmp_path / "absent.csv")


HEADER = "index,label,clean_correct,robust,broken_by,int8_clean_correct,int8_robust,int8_broken_by\n"


@pytest.mark.parametrize("row", ["1,3,0,1,,1,1,", "1,3,1,0,pgd,0,1,"], ids=["robust", "int8_robust"])
def test_a_sample_robust_but_wrong_clean_is_refused_naming_the_file(tmp_path, row):
    path = tmp_path / "samples.csv"
    path.write_text(HEADER + "0,2,1,1,,1,1,\n" + row + "\n")
    for column in ("robust", "clean_correct", "int8_robust"):  # whichever column is read: the file is corrupt
        with pytest.raises(ValueError, match="robust 1 but .*clean_correct 0") as err:
            read_outcome(path, column)
        assert str(path) in str(err.value) and "index 1" in str(err.value)


def test_an_int8_robust_column_of_a_subset_is_checked_on_its_attacked_samples_only(tmp_path):
    """evaluate.int8_robust_images: the real INT8 model's robust cells are empty where it was not attacked.
    The file reads as usual; a wrong cell among the attacked ones is still caught; the column itself is
    not a whole-test-set outcome and is refused as one."""
    path = tmp_path / "samples.csv"
    path.write_text(HEADER + "0,2,1,1,,1,1,\n1,3,1,0,pgd,1,,\n2,4,0,0,,0,,\n")
    np.testing.assert_array_equal(read_outcome(path).correct, [True, False, False])
    with pytest.raises(ValueError, match="int8_robust.*empty"):
        read_outcome(path, "int8_robust")
    path.write_text(HEADER + "0,2,1,1,,0,1,\n1,3,1,0,pgd,1,,\n")
    with pytest.raises(ValueError, match="int8_robust 1 but int8_clean_correct 0"):
        read_outcome(path)


def write_outcomes(path, rows) -> None:
    path.write_text("index,label,clean_correct,robust,broken_by\n"
                    + "".join(f"{i},{label},1,{r},{'' if r else 'pgd'}\n" for i, label, r in rows))


def test_compare_refuses_outcomes_of_different_samples_or_labels(tmp_path):
    base = [(i, i % 10, i % 2) for i in range(20)]
    write_outcomes(tmp_path / "a.csv", base)
    write_outcomes(tmp_path / "b.csv", [(i, label, 1 - r) for i, label, r in base])
    write_outcomes(tmp_path / "shifted.csv", [(i + 1, label, r) for i, label, r in base])
    write_outcomes(tmp_path / "relabelled.csv", [(i, (label + 1) % 10 if i == 7 else label, r) for i, label, r in base])
    a, b = read_outcome(tmp_path / "a.csv"), read_outcome(tmp_path / "b.csv")
    assert compare([a], [b], "equivalent", n_boot=50)["n_samples"] == 20  # same samples and labels: compared
    with pytest.raises(ValueError, match="different test samples") as err:
        compare([a], [read_outcome(tmp_path / "shifted.csv")], "greater", n_boot=50)
    assert "a.csv" in str(err.value) and "shifted.csv" in str(err.value)
    with pytest.raises(ValueError, match="1 sample\\(s\\) different labels") as err:
        compare([a, a], [b, read_outcome(tmp_path / "relabelled.csv")], "greater", n_boot=50)
    assert "relabelled.csv" in str(err.value)
    with pytest.raises(ValueError, match="relabelled.csv"):  # across seeds too: the bootstrap pairs sample j
        compare([a, read_outcome(tmp_path / "relabelled.csv")], [b, b], "greater", n_boot=50)
