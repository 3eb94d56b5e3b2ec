"""Paired statistics that decide a claim "model A vs model B" from per-sample outcomes (``samples.csv``).

Every model of one experiment is evaluated on the same test samples, for the same seeds, so two models'
outcomes are paired twice: by seed (row s of A and of B come from seed s) and by test sample (column j is
the same image). Pairing removes the variance both models share (easy and hard samples, a lucky seed), so a
paired comparison is much tighter than comparing two means with their own error bars.

* ``paired_bootstrap``: the statistic is the difference of mean accuracies, mean(A) - mean(B), in
  percentage points. Its confidence interval comes from a two-level (hierarchical) percentile bootstrap:
  each replicate resamples seeds with replacement, then test samples with replacement, with the same
  sample indices for A and B (this keeps the pairing) and for every resampled seed. Resampling both
  levels counts both sources of variation: training randomness (seeds) and the finite test set (samples).
  Efron & Tibshirani, *An Introduction to the Bootstrap*, Chapman & Hall, 1993.
* ``mcnemar_exact``: the exact McNemar test on the pooled pairs (every seed's samples stacked), a two-sided
  binomial test on the discordant pairs. It is reported beside the interval, not used for the verdict: it
  treats seeds as extra samples and so ignores the variation between seeds.
  McNemar, Q., *Note on the sampling error of the difference between correlated proportions or
  percentages*, Psychometrika 12(2):153-157, 1947.
* ``verdict``: the claim ("greater", "less" or "equivalent" within a margin) is confirmed, refuted or
  inconclusive from the bootstrap interval alone; ``compare`` puts it all together. A model that diverged
  on any seed has no outcome: its comparison is "diverged" with NaN statistics, never a number. A model
  that collapsed on a seed (itself or a model it was built from, as its eval.json says) has an outcome,
  but a constant classifier is no evidence for or against a claim: its comparison is "collapsed", with
  NaN statistics too.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest

CLAIMS = ("greater", "less", "equivalent")
DIVERGED = "diverged"
COLLAPSED = "collapsed"

# Bootstrap sample-index draws per chunk are capped at this many integers (memory, not results: the
# chunk size depends only on the array shape, so a fixed seed gives the same numbers).
_MAX_DRAWS_PER_CHUNK = 4_000_000


# (clean column, robust column) pairs of a samples.csv: a sample robust under the attacks is correct clean
OUTCOME_PAIRS = (("clean_correct", "robust"), ("int8_clean_correct", "int8_robust"))
# Robust columns whose cells are empty on the samples not attacked (evaluate.int8_robust_images): checked
# on the attacked ones only, and never read as a whole-test-set outcome.
SUBSET_COLUMNS = ("int8_robust",)


@dataclass(frozen=True)
class Outcome:
    """One 0/1 column of a ``samples.csv``, ordered by sample ``index``, with the samples' ``labels``: two
    models are compared only on the same samples with the same labels."""

    path: Path
    index: np.ndarray
    labels: np.ndarray
    correct: np.ndarray


def _bits(table: pd.DataFrame, path: Path, column: str) -> np.ndarray | None:
    """A 0/1 column as bools (file order); None when every cell is empty (a diverged model)."""
    cells = table[column].str.strip()
    empty = cells == ""
    if len(cells) and empty.all():
        return None
    if empty.any():
        raise ValueError(f"{path}: column {column!r} has {int(empty.sum())} empty cells of {len(cells)} "
                         "(a diverged model has all of them empty)")
    bad = ~cells.isin(["0", "1"])
    if bad.any():
        raise ValueError(f"{path}: column {column!r} has values other than 0/1: {sorted(set(cells[bad]))[:5]}")
    return cells.to_numpy() == "1"


def read_outcome(path: str | Path, column: str = "robust") -> Outcome | None:
    """One 0/1 column of a ``samples.csv`` ordered by ``index``; None if the model diverged.

    A diverged model has every cell of the column empty. A missing file raises ``FileNotFoundError``; a
    missing column, a partly empty column, a value other than 0/1, a duplicated index or a sample robust
    but misclassified clean (robust 1 where clean_correct is 0, in any ``OUTCOME_PAIRS``) raises ``ValueError``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such samples file (wanted column {column!r})")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    for needed in ("index", "label", column):
        if needed not in table.columns:
            raise ValueError(f"{path}: no column {needed!r} (columns: {', '.join(table.columns)})")
    for clean_column, robust_column in OUTCOME_PAIRS:
        if clean_column in table.columns and robust_column in table.columns:
            rows = table
            if robust_column in SUBSET_COLUMNS and robust_column != column:
                rows = table[table[robust_column].str.strip() != ""]
            clean, robust = _bits(rows, path, clean_column), _bits(rows, path, robust_column)
            if clean is not None and robust is not None and (robust & ~clean).any():
                rows = rows["index"][robust & ~clean].tolist()
                raise ValueError(f"{path}: {len(rows)} sample(s) with {robust_column} 1 but {clean_column} 0 "
                                 f"(index {', '.join(rows[:5])}): a sample robust under attack is correct clean; "
                                 "the file was edited or is corrupt: re-run its evaluation")
    correct = _bits(table, path, column)
    if correct is None:
        return None
    index = pd.to_numeric(table["index"], errors="raise")
    if index.duplicated().any():
        raise ValueError(f"{path}: duplicated values in column 'index'")
    order = np.argsort(index.to_numpy(), kind="stable")
    return Outcome(path=path, index=index.to_numpy()[order], labels=table["label"].str.strip().to_numpy()[order],
                   correct=correct[order])


def check_same_samples(a: Outcome, b: Outcome) -> None:
    """Raise ValueError, naming both files, unless ``a`` and ``b`` hold the same samples with the same labels."""
    if not np.array_equal(a.index, b.index):
        raise ValueError(f"{a.path} and {b.path} hold different test samples (column 'index'): "
                         "a paired comparison needs the same test set")
    if not np.array_equal(a.labels, b.labels):
        differ = int(np.count_nonzero(a.labels != b.labels))
        raise ValueError(f"{a.path} and {b.path} give {differ} sample(s) different labels (column 'label'): "
                         "a paired comparison needs the same test set")


def _as_bool(x: object, name: str) -> np.ndarray:
    """``x`` as a bool array; 0/1 integers are accepted, any other value raises."""
    array = np.asarray(x)
    if array.dtype == bool:
        return array
    if array.size and not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name}: outcomes must be bool or 0/1")
    return array.astype(bool)


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> dict:
    """Exact McNemar test of paired binary outcomes a, b (1-D, same length).

    n10: a correct and b wrong; n01: a wrong and b correct. p_value: two-sided exact binomial test of
    n10 among the n10 + n01 discordant pairs against 1/2; 1.0 when there are none.
    """
    a, b = _as_bool(a, "a"), _as_bool(b, "b")
    if a.ndim != 1 or b.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"mcnemar_exact wants two 1-D arrays of the same length, got shapes {a.shape} and {b.shape}")
    n10 = int(np.count_nonzero(a & ~b))
    n01 = int(np.count_nonzero(~a & b))
    p_value = 1.0 if n10 + n01 == 0 else float(binomtest(n10, n10 + n01, 0.5).pvalue)
    return {"n01": n01, "n10": n10, "p_value": p_value}


def _resample_counts(rng: np.random.Generator, n_draws: int, size: int) -> np.ndarray:
    """(n_draws, size) counts: how often each of ``size`` items is picked in ``size`` draws with replacement.

    Equivalent to one index vector per replicate, kept as counts so a replicate's sums are a matrix product.
    """
    picks = rng.integers(0, size, size=(n_draws, size))
    picks += np.arange(n_draws)[:, None] * size
    return np.bincount(picks.ravel(), minlength=n_draws * size).reshape(n_draws, size)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Difference of mean accuracies mean(a) - mean(b) in points, with a two-level paired bootstrap CI.

    a, b: bool arrays shaped (seeds, samples), paired by row (seed) and column (test sample). Each replicate
    resamples seeds, then samples (one index vector shared by a, b and every resampled seed). Returns
    ``diff``, ``ci_low``, ``ci_high`` (percentile interval at ``level``), ``n_seeds`` and ``n_samples``.
    Deterministic for a given ``seed``.
    """
    a, b = _as_bool(a, "a"), _as_bool(b, "b")
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"paired_bootstrap wants two 2-D (seeds, samples) arrays of the same shape, "
                         f"got {a.shape} and {b.shape}")
    n_seeds, n_samples = a.shape
    if n_seeds == 0 or n_samples == 0:
        raise ValueError(f"paired_bootstrap needs at least one seed and one sample, got shape {a.shape}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")

    # Per-sample difference in {-1, 0, 1}. Float64 holds the integer sums exactly (far below 2**53) and
    # lets the matrix products below use BLAS.
    sample_diff = a.astype(np.float64) - b.astype(np.float64)
    rng = np.random.default_rng(seed)
    seed_counts = _resample_counts(rng, n_boot, n_seeds).astype(np.float64)          # (n_boot, n_seeds)
    replicate_sums = np.empty(n_boot)
    chunk = max(1, _MAX_DRAWS_PER_CHUNK // n_samples)
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        sample_counts = _resample_counts(rng, stop - start, n_samples).astype(np.float64)  # (chunk, n_samples)
        per_seed_sums = sample_counts @ sample_diff.T                                      # (chunk, n_seeds)
        replicate_sums[start:stop] = np.einsum("rs,rs->r", seed_counts[start:stop], per_seed_sums)
    replicates = 100.0 * replicate_sums / (n_seeds * n_samples)

    tail = (1.0 - level) / 2.0
    ci_low, ci_high = np.quantile(replicates, [tail, 1.0 - tail])
    return {"diff": 100.0 * float(sample_diff.mean()), "ci_low": float(ci_low), "ci_high": float(ci_high),
            "n_seeds": int(n_seeds), "n_samples": int(n_samples)}


def _check_claim(claim: str) -> None:
    if claim not in CLAIMS:
        raise ValueError(f"unknown claim {claim!r}; known claims: {', '.join(CLAIMS)}")


def verdict(ci_low: float, ci_high: float, claim: str, margin: float) -> str:
    """"confirmed", "refuted" or "inconclusive" for a claim about A - B given its CI (in points).

    greater (A > B): confirmed if ci_low > 0, refuted if ci_high < 0 (A significantly below B).
    less (A < B): the mirror. equivalent (|A - B| <= margin): confirmed if margin > 0 and the whole
    interval lies in [-margin, margin], refuted if the whole interval lies outside it on one side.
    """
    _check_claim(claim)
    if math.isnan(ci_low) or math.isnan(ci_high):
        raise ValueError("verdict of a NaN interval (a diverged model has no verdict but 'diverged')")
    if ci_low > ci_high:
        raise ValueError(f"ci_low {ci_low} is above ci_high {ci_high}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if claim == "greater":
        if ci_low > 0:
            return "confirmed"
        return "refuted" if ci_high < 0 else "inconclusive"
    if claim == "less":
        if ci_high < 0:
            return "confirmed"
        return "refuted" if ci_low > 0 else "inconclusive"
    if margin > 0 and -margin <= ci_low and ci_high <= margin:
        return "confirmed"
    if ci_low > margin or ci_high < -margin:
        return "refuted"
    return "inconclusive"


PerSeedOutcomes = np.ndarray | Sequence[np.ndarray | Outcome | None]


def _per_seed_rows(x: PerSeedOutcomes, name: str) -> list[np.ndarray | None]:
    """The per-seed 1-D outcomes of a (seeds, samples) array or of a list of them (None: diverged seed)."""
    rows = [None if row is None else _as_bool(row.correct if isinstance(row, Outcome) else row, name) for row in x]
    for s, row in enumerate(rows):
        if row is not None and row.ndim != 1:
            raise ValueError(f"{name}: seed {s} has shape {row.shape}, wanted a 1-D array of samples")
    return rows


def _collapsed_seeds(flags: Sequence[bool] | None, n_seeds: int, name: str) -> int:
    """How many of the ``n_seeds`` seeds ``flags`` marks collapsed (None: none)."""
    if flags is None:
        return 0
    if len(flags) != n_seeds:
        raise ValueError(f"{name}: {len(flags)} collapsed flags for {n_seeds} seeds")
    return int(sum(bool(f) for f in flags))


def compare(a: PerSeedOutcomes, b: PerSeedOutcomes, claim: str, margin: float = 1.0, n_boot: int = 2000,
            seed: int = 0, level: float = 0.95, a_collapsed: Sequence[bool] | None = None,
            b_collapsed: Sequence[bool] | None = None) -> dict:
    """Decide ``claim`` about model A vs model B from their per-seed, per-sample outcomes.

    a, b: (seeds, samples) bool arrays, or lists of per-seed 1-D arrays or ``Outcome``s (``read_outcome``)
    where None marks a diverged seed. All ``Outcome``s must hold the same samples with the same labels.
    a_collapsed, b_collapsed: per seed, whether that seed's model collapsed (``stats.collapsed_mask``).
    Returns the ``paired_bootstrap`` dict plus ``a_mean``/``b_mean`` (percent), the pooled McNemar test
    (``mcnemar_p``, ``n01``, ``n10``), ``a_diverged``/``b_diverged`` and ``a_collapsed``/``b_collapsed``
    (seed counts) and ``verdict``. If any seed of either model diverged the verdict is "diverged", else if
    any collapsed it is "collapsed"; then every statistic is NaN.
    """
    _check_claim(claim)
    rows_a, rows_b = _per_seed_rows(a, "a"), _per_seed_rows(b, "b")
    if len(rows_a) != len(rows_b):
        raise ValueError(f"a has {len(rows_a)} seeds and b has {len(rows_b)}; the comparison pairs them seed by seed")
    read = [row for row in (*a, *b) if isinstance(row, Outcome)]
    for other in read[1:]:  # the bootstrap pairs sample j across models and seeds: one test set for all
        check_same_samples(read[0], other)
    if not rows_a:
        raise ValueError("a and b have no seeds")
    counts = {"a_diverged": sum(row is None for row in rows_a), "b_diverged": sum(row is None for row in rows_b),
              "a_collapsed": _collapsed_seeds(a_collapsed, len(rows_a), "a_collapsed"),
              "b_collapsed": _collapsed_seeds(b_collapsed, len(rows_b), "b_collapsed")}
    unhealthy = (DIVERGED if counts["a_diverged"] or counts["b_diverged"]
                 else COLLAPSED if counts["a_collapsed"] or counts["b_collapsed"] else None)
    if unhealthy:
        nan = math.nan
        return {"diff": nan, "ci_low": nan, "ci_high": nan, "n_seeds": len(rows_a), "n_samples": nan,
                "a_mean": nan, "b_mean": nan, "mcnemar_p": nan, "n01": nan, "n10": nan, **counts,
                "verdict": unhealthy}
    lengths = {len(row) for row in rows_a + rows_b}
    if len(lengths) != 1:
        raise ValueError(f"every seed of a and b must have the same number of samples, got {sorted(lengths)}")
    a2, b2 = np.stack(rows_a), np.stack(rows_b)
    result = paired_bootstrap(a2, b2, n_boot=n_boot, seed=seed, level=level)
    test = mcnemar_exact(a2.ravel(), b2.ravel())
    result.update({"a_mean": 100.0 * float(a2.mean()), "b_mean": 100.0 * float(b2.mean()),
                   "mcnemar_p": test["p_value"], "n01": test["n01"], "n10": test["n10"],
                   **counts,
                   "verdict": verdict(result["ci_low"], result["ci_high"], claim, margin)})
    return result
