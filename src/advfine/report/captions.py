"""The caption of every table (``table_captions``): its title and notes, written once, in one light markup
that ``markdown``, ``latex`` and ``html`` turn into each file format of ``render``.

The markup is plain text with LaTeX math between dollar signs (``$\\mathcal{T}_{ad}(f_{st})$``) and the
symbols ±, ≈, ·, †, < and > written as such. LaTeX keeps the math and escapes the rest; Markdown and HTML show the
math in the paper's plain notation of the Markdown tables (``T_ad(f_st)``). A value inserted into a caption
(a dataset or architecture name) must not hold a dollar sign.
"""
from __future__ import annotations

import html as html_lib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from advfine.core.health import CONSTANT_SHARE
from advfine.report.labels import NA, arch_name, dataset_name, latex_escape
from advfine.report.stats import DEPLOY_UNITS, OBTAIN_UNITS, cost_unit, groups, joined
from advfine.report.tables import level_for


@dataclass(frozen=True)
class Caption:
    """A table's caption: ``title`` above it, ``notes`` (what each cell means) below it, in the markup of
    this module. ``number`` (``"Table 2"``) heads the Markdown and HTML title; LaTeX numbers its floats."""

    title: str
    notes: str
    number: str = ""

    @property
    def numbered_title(self) -> str:
        """The title after its number (``"Table 2: ..."``), for Markdown and HTML."""
        return f"{self.number}: {self.title}" if self.number else self.title


# ----------------------------------------------------------------------------- the markup

_MATH = re.compile(r"(\$[^$]*\$)")
# LaTeX math -> the plain notation: commands first, then sub- and superscript braces, then other braces.
_PLAIN_COMMANDS = {r"\mathcal": "", r"\cdot": "·", r"\pm": "±", r"\approx": "≈", r"\dagger": "†", r"\ell": "ℓ",
                   r"\ln": "ln", r"\,": " "}
_PLAIN_SCRIPT = re.compile(r"([_^])\{([^{}]*)\}")
# Symbols of the text that LaTeX sets in math (``labels.latex_escape`` sets † already).
_LATEX_SYMBOLS = {"±": r"$\pm$", "≈": r"$\approx$", "·": r"$\cdot$", "<": "$<$", ">": "$>$"}


def _parts(text: str) -> list[str]:
    """``text`` split into plain text and ``$math$`` parts; a ValueError for an unclosed ``$``."""
    parts = _MATH.split(text)
    if any("$" in part for part in parts[::2]):
        raise ValueError(f"caption text with an unclosed $: {text!r}")
    return parts


def _plain_math(math_text: str) -> str:
    """``\\mathcal{T}_{ad}(f_{st}^{q})`` -> ``T_ad(f_st^q)``."""
    for command, plain in sorted(_PLAIN_COMMANDS.items(), key=lambda kv: -len(kv[0])):
        math_text = math_text.replace(command, plain)
    while _PLAIN_SCRIPT.search(math_text):
        math_text = _PLAIN_SCRIPT.sub(r"\1\2", math_text)
    return math_text.replace("{", "").replace("}", "")


def markdown(text: str) -> str:
    """The markup as the plain text of the Markdown files: math in the paper's plain notation."""
    return "".join(_plain_math(part[1:-1]) if i % 2 else part for i, part in enumerate(_parts(text)))


def latex(text: str) -> str:
    """The markup as LaTeX: math kept, the rest escaped (``%``, ``&``, ``_``...), ±, ≈ and · set as math."""
    def escaped(plain: str) -> str:
        out = latex_escape(plain)
        for symbol, tex in _LATEX_SYMBOLS.items():
            out = out.replace(symbol, tex)
        return out

    return "".join(part if i % 2 else escaped(part) for i, part in enumerate(_parts(text)))


def html(text: str) -> str:
    """The markup as HTML text: the Markdown version, escaped."""
    return html_lib.escape(markdown(text))


# ----------------------------------------------------------------------------- the captions

_F_ST, _F_RB = "$f_{st}$", "$f_{rb}$"
_T_AD_F_ST = r"$\mathcal{T}_{ad}(f_{st})$"
_T_ST_ANY, _T_AD_ANY = r"$\mathcal{T}_{st}(\cdot)$", r"$\mathcal{T}_{ad}(\cdot)$"

# The legend of the health marks (labels.health_text), under every table that shows accuracies.
HEALTH_NOTE = ("diverged (k/n) = k of n seeds diverged (non-finite weights or logits) and are not scored; "
               "collapsed (k/n) = k of n seeds whose model, or a model it was built from, was trained into a "
               "(near-)constant classifier (at chance accuracy and a loss of ln C on clean training images, or "
               f"one class taking at least {CONSTANT_SHARE:.0%} of the predictions): evaluated, but never "
               "averaged or compared. A compressed model without fine-tuning that predicts one class is a "
               "measurement and is averaged.")
ACCURACY_NOTE = ("Accuracy in %, mean ± sample std (ddof=1) over seeds; $n$ = number of seeds (std 0.00 when "
                 "$n = 1$); n/a = no data for that combination. Robustness: per-sample worst case over the "
                 "evaluation's attack suite and, where called for, its escalation to stronger attacks. † = the "
                 "evaluation audit flagged a sign of a failed attack on at least one seed (see "
                 "evaluation_audit). " + HEALTH_NOTE)
AUDIT_NOTE = ("Clean, PGD (the paper's attack) and worst case (per-sample, over the whole suite) in %, mean ± "
              "sample std over the seeds that neither diverged nor collapsed (n: all seeds, those left out in "
              "brackets); gap = PGD minus worst case (points); escalation gain = points the escalation's stronger "
              "attacks (evaluate.escalation) took off the worst case, mean over seeds (seeds escalated in "
              "brackets); decisive attack = the attack after PGD that broke the most samples. Checks, mean "
              "over seeds in % of the test set (flagged seeds in brackets): "
              "gradient-free gain = samples only the transfer or black-box attack broke; large-eps standing = "
              "samples APGD-CE leaves at a large radius; more-effort gain = samples broken by APGD-CE with more "
              "steps and restarts after the suite; zero gradients = clean-correct samples with an all-zero input "
              "gradient. INT8 robust = the deployed integer model under the transfer and Square attacks. "
              + HEALTH_NOTE)
GAINS_NOTE = ("Wall times in minutes, mean ± sample std over seeds; MACs: mean over seeds of the estimated "
              f"multiply-accumulates recorded for each stage; ratios: ratio of means to {_F_RB}'s; n/a = no data. "
              "Wall times depend on the machine and on how "
              "many jobs shared it.")
CONTROLS_NOTE = (
    "Accuracy in %, mean ± sample std (ddof=1) over seeds; $n$ = number of seeds. Robustness: per-sample worst "
    "case over the evaluation's attack suite († = flagged by the evaluation audit). Start: the compressed "
    "model's trained weights, or random initialization of the same (compressed) architecture. Budget: the "
    "fine-tuning settings (epochs, lr, momentum of the compression method) or the base-training settings. "
    "Training time and MACs: the arm's own training stage (not the base model's). The from-scratch arms "
    "are run under the first base model; they do not depend on its weights. " + HEALTH_NOTE)


def compute_note(df: pd.DataFrame) -> str:
    """The compute table's notes, with the recorded batch size and threads."""
    def recorded(column: str, default: str) -> str:
        value = joined(df[column]) if column in df and len(df) else math.nan
        return default if isinstance(value, float) else value

    batch, threads, rounds = (recorded("latency_batch", "256"), recorded("latency_threads", "1"),
                              recorded("latency_rounds", "the"))
    return (f"Latency: median over {rounds} rounds of timed forward passes of a batch of {batch} test images on "
            f"the CPU with {threads} torch thread(s), in ms, mean ± sample std over seeds; every model of the run "
            "was timed in one job that ran alone (stage deployment), each round timing every model once, so "
            "a drift of the machine's speed hits all alike. Speed-up: ratio of means, the dense "
            f"model of the same base training without fine-tuning ({_F_ST} or {_F_RB}) to this model (so "
            f"{_F_ST} and {_F_RB} are 1.00x). Latencies depend on the machine: compare them "
            "within one run. Fake-quantized models ($f^q$, PTQ and QAT) run as fp32 with rounding, so they are "
            "not faster; the real INT8 model is torch.ao's (oneDNN) integer model of the PTQ INT8 node (n/a "
            "elsewhere), converted from the fake-quant model (same scales), its clean accuracy (%) beside the "
            "fake-quant model's and the share of test predictions on which both agree (the lowest over "
            "seeds). Params and MACs per input: mean over seeds; weights: bytes of the stored weights, "
            "checkpoint: file size (kB = 1000 bytes, MB = $10^6$ bytes). Whole lineage: wall time in minutes "
            "(mean ± std) and estimated MACs (mean) of every stage that produced the model (training + "
            "compression + fine-tuning). Peak memory: peak resident set size of the job process, the maximum "
            "over the lineage's stages and the evaluation, in MB (mean ± std). Evaluation: seconds of the "
            "attack suite, the audit and the robustness curve (mean ± std); n/a = no data.")


def _units(df: pd.DataFrame, units) -> str:
    """The units the groups of ``df`` chose (``stats.cost_unit``), joined; the last of ``units`` for no rows."""
    chosen = sorted({cost_unit(g, units).axis for _, g in groups(df)}) or [units[-1].axis]
    return " / ".join(chosen)


def efficiency_note(df: pd.DataFrame) -> str:
    """The efficiency table's notes, with the cost units the run's groups use."""
    return ("A recipe = base training, compression method and level, fine-tuning. Accuracy in %, mean ± sample "
            "std (ddof=1) over the seeds that neither diverged nor collapsed ($n$: all seeds, those left out in "
            "brackets). Robustness: per-sample worst case over the attack suite († = flagged by the evaluation "
            f"audit). Cost to obtain: {_units(df, OBTAIN_UNITS)}, the sum over the model's lineage (base training "
            "+ compression or QAT + fine-tuning; a shared base model counted in full in each recipe), mean ± std; "
            "the unit is the first that every node of the run recorded: measured energy (kJ), else GPU time "
            "(GPU-h; a stage on the CPU adds none), else process CPU time (CPU-h). Cost / f_rb: ratio of means to "
            f"full adversarial training ({_F_RB}). Speed-up: ratio of mean CPU inference latencies, the dense "
            f"model of the same base training without fine-tuning ({_F_ST} or {_F_RB}) to this recipe. "
            "Pareto-optimal: no other recipe has at least its robustness at no more cost, one of them strictly "
            f"(obtain: the cost to obtain; deployed: {_units(df, DEPLOY_UNITS)}); tied recipes are both optimal. "
            "n/a = not recorded. Costs depend on the machine and on what else ran on it: compare them within one "
            "run.")


EFFICIENCY_STAGES_NOTE = (
    "Each step's own stage (eval.json stages, not its lineage): wall time in minutes and cost in the run's unit "
    "(see the efficiency table), mean ± sample std over the nodes that hold it, every seed counted (a model "
    "that collapsed still cost its time); ratio: ratio of means to the adversarial training of "
    f"{_F_RB} (= 1). Dense and compressed models' adversarial fine-tuning: the fine-tuning stage of every "
    f"{_T_AD_ANY} node. Compression: the pruning or post-training quantization stage of each "
    "compressed model. The paper (CIFAR10, one GPU): about 118 minutes of adversarial training, 14 of adversarial "
    "fine-tuning and 10 for adversarial fine-tuning of a compressed model, so 1 : 0.119 : 0.085; it gives no "
    "time for compression itself. n/a = not run.")


def claims_note(margin: float) -> str:
    """The claims table's notes, with its equivalence margin in points."""
    return (f"A - B: difference of mean accuracy in points over the seeds both models have (n) and the test "
            f"samples, paired; 95 % CI: two-level bootstrap (seeds, then samples; 2,000 replicates). Verdict "
            f"from the CI alone: A > B (A < B) confirmed when the CI lies above (below) 0, refuted when it lies "
            f"on the other side; A ≈ B confirmed when the CI lies within ±{margin:g} points, refuted when it "
            f"lies outside; otherwise inconclusive. McNemar p: exact test on the pooled pairs (seeds stacked), "
            f"shown beside. Robust = per-sample worst case over the attack suite. not run = a model of the "
            f"claim is not in this experiment. diverged / collapsed (A k/n, B k/n) = k of the n seeds of A or "
            f"B diverged, or were trained into a (near-)constant classifier (the model itself or a model it was "
            f"built from): no statistic is computed, the comparison is not evidence either way.")


def table_captions(df: pd.DataFrame, dataset: str, prune_level: float | Mapping[str, float],
                   ptq_bits: int | Mapping[str, int], margin: float) -> dict[str, Caption]:
    """{table layout key: its caption} for the tables of one experiment (``render.TABLES``): ``df`` its rows,
    ``prune_level``/``ptq_bits`` the report's levels (one value or {dataset: value}), ``margin`` the claims'
    equivalence margin in points."""
    p_lev, q_bits = level_for(prune_level, dataset), level_for(ptq_bits, dataset)
    sparsity = NA if p_lev is None else f"{100 * p_lev:g}%"
    quantization = NA if q_bits is None else f"INT{int(q_bits)}"
    archs = ", ".join(arch_name(a) for a in sorted(df["arch"].dropna().unique())) if len(df) else ""
    on = f"{dataset_name(dataset)} ({archs})" if archs else dataset_name(dataset)
    num3, num5 = (4, 6) if dataset == "cifar10" else (3, 5)
    return {
        "table2": Caption(
            f"Baseline performance of the dense standard ({_F_ST}) and robust ({_F_RB}) models on {on}, test "
            f"accuracy and robustness (accuracy under PGD); {_T_AD_F_ST} = the standard model with adversarial "
            "fine-tuning.", ACCURACY_NOTE, "Table 2"),
        "table3": Caption(
            f"Performance of compressed standard and robust models on {on}: $\\ell_1$-norm filter pruning with "
            f"{sparsity} sparsity ($f^p$) and {quantization} post-training quantization ($f^q$), without "
            f"fine-tuning (None), with standard ({_T_ST_ANY}) and adversarial ({_T_AD_ANY}) fine-tuning.",
            ACCURACY_NOTE, f"Table {num3}"),
        "table5": Caption(
            f"Performance on {on} of the dense models {_F_ST}, {_F_RB} and of compressed models after "
            f"adversarial fine-tuning {_T_AD_ANY}: pruning with {sparsity} sparsity ($f^p$), {quantization} "
            "post-training quantization (PTQ) and quantization-aware training (QAT) ($f^q$).",
            ACCURACY_NOTE, f"Table {num5}"),
        "gains": Caption(
            f"Computational gains on {on}: the adversarial stage of full adversarial training ({_F_RB}) vs "
            f"adversarial fine-tuning of the dense ({_T_AD_F_ST}), pruned ({sparsity} sparsity) and quantized "
            f"({quantization} PTQ) standard models, with its wall time and estimated multiply-accumulates "
            "(MACs), and the wall time of each model's whole lineage (standard training + compression + "
            f"fine-tuning); ratios to {_F_RB}'s.", GAINS_NOTE),
        "compute": Caption(
            f"Compute and memory on {on}: every model of the experiment with its size (parameters, "
            "multiply-accumulates (MACs) per input, weight and checkpoint size), its CPU inference latency and "
            "speed-up over the dense model of the same base training, the real INT8 model of the PTQ INT8 node "
            "(latency, speed-up, clean accuracy beside the fake-quant model's), the wall time and estimated "
            "MACs of its whole training lineage, and the peak memory of its jobs.", compute_note(df)),
        "audit": Caption(
            f"Evaluation audit on {on}: per model, the robust accuracy under the paper's PGD and the per-sample "
            "worst case over the attack suite, the attack that made the difference, and the attack-failure "
            "checks (gradient masking) with the seeds each flagged.", AUDIT_NOTE),
        "controls": Caption(
            f"Controls on {on}: adversarial fine-tuning {_T_AD_ANY} of each compressed model beside FGSM-RS, "
            "N-FGSM and TRADES fine-tuning at the same budget and PGD training of the same architecture from "
            "random initialization (fine-tuning and base-training budgets).", CONTROLS_NOTE),
        "efficiency": Caption(
            f"Robustness and cost on {on}: every recipe of the run with its worst-case robust and clean accuracy, "
            f"its cost to obtain and the ratio to full adversarial training ({_F_RB}), its deployed CPU speed-up "
            "over its dense base, and whether it lies on the Pareto frontier of robustness against each cost.",
            efficiency_note(df)),
        "efficiency_stages": Caption(
            f"The paper's computational gains as ratios of this run's stages on {on}: adversarial training of "
            f"{_F_RB}, adversarial fine-tuning of dense and of compressed models, and compression, each relative "
            "to the adversarial training, beside the paper's 118 : 14 : 10 minutes.", EFFICIENCY_STAGES_NOTE),
        "claims": Caption(
            f"The paper's claims on {on}, each decided by a paired statistic over seeds and test samples.",
            claims_note(margin)),
    }
