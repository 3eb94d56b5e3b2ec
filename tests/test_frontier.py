"""Tests for the robustness-cost frontier: the Pareto marks and per-recipe statistics (``report.stats``), the
``efficiency`` and ``efficiency_stages`` tables (``report.efficiency``) and Figure 6, on synthetic eval.json
files built as the report tests build them (their stage costs: f_rb's base training 118/120 min, f_st's 10
min, compression 1-2 s, adversarial fine-tuning 14 min dense, 10 pruned, 12 PTQ; CPU time = wall time)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from test_report import PDF_MAGIC, PNG_MAGIC, TIMED, check_latex_table, frame, make_record, synthetic_records

from advfine.pipeline import vocab
from advfine.report import collect, efficiency, figures, render, stats

COLLAPSED = {"collapsed": True, "collapsed_reason": "constant classifier"}


# ----------------------------------------------------------------------------- Pareto marks


def test_a_dominated_point_is_not_pareto_optimal():
    # cost, robustness: (1, 10) and (2, 30) trade off; (3, 20) is beaten by (2, 30) on both
    assert stats.pareto_mask([1.0, 2.0, 3.0], [10.0, 30.0, 20.0]).tolist() == [True, True, False]
    # equal robustness at a higher cost, or equal cost at lower robustness: dominated
    assert stats.pareto_mask([1.0, 2.0], [30.0, 30.0]).tolist() == [True, False]
    assert stats.pareto_mask([1.0, 1.0], [30.0, 20.0]).tolist() == [True, False]


def test_tied_points_are_both_optimal_and_a_single_point_is():
    assert stats.pareto_mask([1.0, 1.0, 2.0], [30.0, 30.0, 10.0]).tolist() == [True, True, False]
    assert stats.pareto_mask([5.0], [1.0]).tolist() == [True]
    assert stats.pareto_mask([], []).tolist() == []


def test_an_unknown_point_is_never_optimal_and_dominates_nothing():
    assert stats.pareto_mask([np.nan, 2.0, 1.0], [90.0, 10.0, np.nan]).tolist() == [False, True, False]


# ----------------------------------------------------------------------------- recipes and units


def test_collapsed_and_diverged_seeds_are_left_out_of_the_recipe_means(tmp_path):
    recs = [make_record("st", "prune-0.8", "ad", 0, clean=0.80, robust=0.70),
            make_record("st", "prune-0.8", "ad", 1, clean=0.10, robust=0.10, **COLLAPSED),
            make_record("st", "prune-0.8", "ad", 2, clean=None, robust=None, diverged=True,
                        diverged_reason="non-finite loss"),
            make_record("st", "prune-0.8", "ad", 3, clean=0.84, robust=0.76),
            make_record("st", "ptq-int8", "ad", 0, clean=0.10, robust=0.10, **COLLAPSED)]
    df = frame(tmp_path, recs)
    recipes = stats.recipe_stats(df, stats.OBTAIN_UNITS[-1], stats.DEPLOY_UNITS[-1]).set_index("method")
    prune = recipes.loc["prune"]
    assert (prune["n"], prune["scored"], prune["diverged"], prune["collapsed"]) == (4, 2, 1, 1)
    assert prune["robust_mean"] == pytest.approx(73.0) and prune["robust_std"] == pytest.approx(math.sqrt(18))
    assert prune["test_mean"] == pytest.approx(82.0)
    assert prune["obtain_mean"] == pytest.approx((600 + 1 + 600) / 3600)  # f_st + pruning + 10 min fine-tuning
    ptq = recipes.loc["ptq"]  # every seed collapsed: no numbers, never on the frontier
    assert ptq["scored"] == 0 and math.isnan(ptq["robust_mean"]) and not ptq["pareto_obtain"]
    assert prune["pareto_obtain"]
    label = figures._recipe_label(next(stats.recipe_stats(df, stats.OBTAIN_UNITS[-1], stats.DEPLOY_UNITS[-1])
                                       .query("method == 'prune'").itertuples()))
    assert label.endswith("(n = 2, left out: diverged (1/4), collapsed (1/4))")


def test_the_cost_unit_is_the_first_every_scored_node_recorded():
    df = pd.DataFrame({"seed": [0, 1, 2], "obtain_energy_j": [5e3, np.nan, 7e3], "obtain_gpu_h": [0.1, 0.2, 0.3],
                       "obtain_cpu_h": [1.0, 2.0, 3.0], "latency_ms": [1.0, np.nan, 2.0],
                       "weight_bytes": [3e3, 3e3, 3e3]})
    assert stats.cost_unit(df, stats.OBTAIN_UNITS).symbol == "GPU-h"
    assert stats.cost_unit(df, stats.DEPLOY_UNITS).symbol == "kB"
    measured = df.assign(collapsed=[False, True, False])  # the node without energy is not on the figure
    assert stats.cost_unit(measured, stats.OBTAIN_UNITS).symbol == "kJ"
    assert stats.cost_unit(measured, stats.DEPLOY_UNITS).symbol == "ms"
    cpu_only = df.assign(obtain_gpu_h=[0.1, np.nan, 0.3])
    assert stats.cost_unit(cpu_only, stats.OBTAIN_UNITS).axis.startswith("CPU-hours")


# ----------------------------------------------------------------------------- the tables


@pytest.fixture
def costed(tmp_path):
    """The report tests' records with CPU latencies: dense models 10 ms, compressed 5 ms (PTQ INT4 4 ms)."""
    recs = synthetic_records()
    for rec in recs:
        latency = {"dense": 10.0, "ptq-int4": 4.0}.get(rec["compression"], 5.0)
        rec[TIMED] = {"model": {"latency_ms": latency, "batch_size": 256, "threads": 1}}
    return frame(tmp_path, recs)


def _row(table: pd.DataFrame, model: str, level: str) -> pd.Series:
    return table[(table["model"] == model) & (table["compression_level"] == level)].iloc[0]


def test_efficiency_table_every_recipe_with_its_ratio_to_f_rb_and_speed_up(costed):
    t = efficiency.efficiency_table(costed)
    assert len(t) == costed.groupby(["train", "method", "level", "finetune"], dropna=False).ngroups
    assert set(t["cost_unit"]) == {"CPU-h"}  # no node ran on a GPU or measured energy
    f_rb = _row(t, "f_rb", "dense")
    assert f_rb["obtain_mean"] == pytest.approx(119 / 60) and f_rb["obtain_ratio"] == pytest.approx(1.0)
    assert f_rb["obtain_cost"] == "1.98 ± 0.024 CPU-h" and f_rb["latency_speedup"] == pytest.approx(1.0)
    t_ad = _row(t, "T_ad(f_st)", "dense")  # 10 min of standard training + 14 of adversarial fine-tuning
    assert t_ad["obtain_ratio"] == pytest.approx(24 / 119)
    pruned = _row(t, "T_ad(f_st^p)", "sparsity 0.8")  # 10 min + 1 s + 10 min
    assert pruned["obtain_ratio"] == pytest.approx((1201 / 60) / 119)
    assert pruned["robustness"] == "73.00 ± 4.24" and pruned["latency_speedup"] == pytest.approx(2.0)
    assert _row(t, "f_rb^q (PTQ)", "INT4")["latency_speedup"] == pytest.approx(2.5)
    # the cheapest recipe is optimal; f_rb (most expensive, not the most robust) is not
    assert t.loc[t["obtain_mean"].idxmin(), "pareto_obtain"] and not f_rb["pareto_obtain"]
    assert pruned["pareto_obtain"]  # 73 %, the most robust recipe
    assert list(t["pareto_obtain"]) == list(stats.pareto_mask(t["obtain_mean"], t["robust_mean"]))


def test_efficiency_stages_restate_118_14_10_as_ratios(costed):
    s = efficiency.efficiency_stages(costed).set_index("step")
    base = s.loc["adversarial training of f_rb"]
    assert base["nodes"] == 2 and base["wall_min_mean"] == pytest.approx(119.0) and base["wall_ratio"] == 1.0
    dense = s.loc["adversarial fine-tuning, dense models"]
    assert dense["wall_ratio"] == pytest.approx(14 / 119) and dense["paper_ratio"] == pytest.approx(14 / 118)
    compressed = s.loc["adversarial fine-tuning, compressed models"]
    ft = costed[(costed["method"] != "dense") & (costed["finetune"] == "ad")]["finetune_wall_time_s"] / 60
    assert compressed["wall_ratio"] == pytest.approx(ft.mean() / 119)
    assert compressed["cost_ratio"] == pytest.approx(compressed["wall_ratio"])  # CPU time = wall time here
    assert compressed["paper_ratio"] == pytest.approx(10 / 118)
    compress = s.loc["compression (pruning, PTQ)"]
    # each compressed model once per seed: 2 bases x 4 compressions x 2 seeds, less the missing f_rb^q INT8 seed
    assert compress["nodes"] == 15 and math.isnan(compress["paper_ratio"])
    assert s.loc["quantization-aware training", "nodes"] == 0
    layout = efficiency.layout_efficiency_stages(s.reset_index())
    assert list(layout["Paper ratio"][:3]) == ["1.000", "0.119", "0.085"]
    assert layout["Cost ratio"].iloc[3].endswith("e-04")  # seconds against hours
    assert layout["Wall time (min)"].iloc[4] == "n/a"


def test_the_efficiency_tables_render_in_every_format(costed, tmp_path):
    written = render.write_tables(costed, tmp_path, 0.8, 8)
    assert {p.name for p in written} >= {f"{stem}.{ext}" for stem in (vocab.EFFICIENCY, vocab.EFFICIENCY_STAGES)
                                         for ext in vocab.TABLE_FORMATS}
    md = (tmp_path / "efficiency.md").read_text(encoding="utf-8")
    assert "| Pareto: obtain" in md and "CPU-hours to obtain" in md and "T_ad(f_st^p)" in md
    rows = check_latex_table((tmp_path / "efficiency.tex").read_text(encoding="utf-8"))
    assert len(rows) == len(efficiency.efficiency_table(costed))
    assert r"$\mathcal{T}_{ad}(f_{st}^{p})$" in (tmp_path / "efficiency.tex").read_text(encoding="utf-8")
    check_latex_table((tmp_path / "efficiency_stages.tex").read_text(encoding="utf-8"))
    page = (tmp_path / "efficiency.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "Pareto-optimal" in page
    assert "0.119" in (tmp_path / "efficiency_stages.md").read_text(encoding="utf-8")
    assert "0.085" in (tmp_path / "efficiency_stages.html").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- Figure 6


def test_figure6_writes_png_and_pdf(costed, tmp_path):
    paths = figures.plot_figure6(costed, tmp_path / "f6.png", tmp_path / "f6.pdf")
    assert [p.name for p in paths] == ["f6.png", "f6.pdf"]
    assert paths[0].read_bytes()[:8] == PNG_MAGIC and paths[1].read_bytes()[:5] == PDF_MAGIC
    written = figures.plot_figures(costed, tmp_path / "named", [vocab.FIGURE6])
    assert [p.name for p in written] == ["figure6_frontier.png", "figure6_frontier.pdf"]
    empty = figures.plot_figure6(costed.iloc[0:0], tmp_path / "empty.png")
    assert empty[0].read_bytes()[:8] == PNG_MAGIC


def test_figure6_rings_the_pareto_recipes_and_names_the_units(costed, monkeypatch):
    saved = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, *paths: saved.setdefault("fig", fig) and [])
    figures.plot_figure6(costed, "unused.png")
    obtain_ax, deploy_ax = saved["fig"].axes[:2]
    assert obtain_ax.get_xscale() == "log" and obtain_ax.get_xlabel().startswith("CPU-hours to obtain")
    assert deploy_ax.get_xlabel().startswith("CPU inference latency (ms)")
    t = efficiency.efficiency_table(costed)
    rings = [c for c in obtain_ax.collections if c.get_label() == "Pareto-optimal recipe"]
    assert len(rings) == 1 and len(rings[0].get_offsets()) == int(t["pareto_obtain"].sum())
    legend = [text.get_text() for text in deploy_ax.get_legend().get_texts()]
    assert len(legend) == len(t) + 2 and all("(n = 2)" in x or "(n = 1)" in x for x in legend[:-2])


def test_the_plot_stage_reads_the_same_recipes_from_all_metrics_csv(costed, tmp_path):
    collect.write_metrics_csv(costed, tmp_path / "all_metrics.csv")
    again = pd.read_csv(tmp_path / "all_metrics.csv")
    pd.testing.assert_frame_equal(efficiency.efficiency_table(again), efficiency.efficiency_table(costed),
                                  check_dtype=False)
