"""Display labels and cell text of the tables and figures.

* Model labels follow the paper in plain text: ``f_st``, ``f_rb^p``, ``T_ad(f_st^q) (PTQ)``...
  (``^p`` = pruned, ``^q`` = quantized, ``T_st``/``T_ad`` = standard/adversarial fine-tuning),
  built by ``advfine.pipeline.vocab.base_label``/``model_label`` (a node's:
  ``advfine.pipeline.nodes.Node.label``); LaTeX tables render them as math (``latex_model_label``:
  ``$\\mathcal{T}_{ad}(f_{st}^{q})$ (PTQ)``), figures by
  ``advfine.pipeline.vocab.math_model_label``/``mathtext_label``.
* A cell is ``"mean ± std"`` with two decimals (``format_cell``); a requested combination with
  no data is shown as ``n/a`` (``NA``), never dropped.
* Datasets and architectures are named in captions and titles by ``dataset_name``/``arch_name``.
"""
from __future__ import annotations

import math

from advfine.pipeline.vocab import DENSE, QUANTIZATION_METHODS, math_notation

NA = "n/a"

DATASET_NAMES = {"digits": "Digits", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR10"}
ARCH_NAMES = {"cnn8": "8-layer CNN", "resnet18": "ResNet-18"}

# ----------------------------------------------------------------------------- labels


def group_title(keys: tuple) -> str:
    """The title of one (experiment, dataset, arch) group of a table: ``fmnist: Fashion-MNIST, 8-layer CNN``."""
    experiment, dataset, arch = keys
    return f"{experiment}: {dataset_name(dataset)}, {arch_name(arch)}"


def level_label(method: str, level: float | None) -> str:
    """``sparsity 0.8`` / ``INT8`` / ``dense``."""
    if method == DENSE or level is None or (isinstance(level, float) and math.isnan(level)):
        return "dense"
    if method in QUANTIZATION_METHODS:
        return f"INT{int(level)}"
    return f"sparsity {level:g}"


def dataset_name(dataset: str) -> str:
    """Display name: ``fashion_mnist`` -> ``Fashion-MNIST`` (unknown names unchanged)."""
    return DATASET_NAMES.get(dataset, dataset)


def arch_name(arch: str) -> str:
    """Display name: ``cnn8`` -> ``8-layer CNN`` (unknown names unchanged)."""
    return ARCH_NAMES.get(arch, arch)


# ----------------------------------------------------------------------------- cells


def format_cell(mean: float, std: float) -> str:
    """``"82.00 ± 2.83"``, or ``"n/a"`` when there is no data."""
    if mean is None or std is None or math.isnan(mean) or math.isnan(std):
        return NA
    return f"{mean:.2f} ± {std:.2f}"


DIVERGED = "diverged"
COLLAPSED = "collapsed"
FLAG_MARK = "†"  # a robustness cell of a model whose evaluation the audit flagged (legend in every table)


def stat_cell(s: dict, key: str) -> str:
    """The text of one table cell from ``stats.summarize`` output: ``"82.00 ± 2.83"``, with
    ``FLAG_MARK`` on a robustness cell of a flagged model, ``"diverged (1/2)"`` when a seed diverged,
    ``"collapsed (1/2)"`` when a seed collapsed (``stats.collapsed_mask``), both when both happened."""
    if s["diverged"] or s["collapsed"]:
        return health_text(s["diverged"], s["collapsed"], s["n"])
    text = format_cell(s[f"{key}_mean"], s[f"{key}_std"])
    return f"{text} {FLAG_MARK}" if key == "robust" and s["flagged"] and text != NA else text


def health_text(diverged: int, collapsed: int, n: int) -> str:
    """``"diverged (1/3)"``, ``"collapsed (2/3)"``, both joined, or "" when every seed is healthy."""
    marks = [(DIVERGED, diverged), (COLLAPSED, collapsed)]
    return ", ".join(f"{word} ({k}/{n})" for word, k in marks if k)


def seeds_text(n: int, diverged: int, collapsed: int) -> str:
    """A seed count with the seeds its numbers leave out: ``"3 (1 collapsed)"``, ``"3"`` when none."""
    left_out = [f"{int(k)} {word}" for word, k in ((DIVERGED, diverged), (COLLAPSED, collapsed)) if k]
    return f"{int(n)} ({', '.join(left_out)})" if left_out else str(int(n))


def format_cost(mean: float, std: float, symbol: str) -> str:
    """``"1.23 ± 0.05 GPU-h"`` (three significant digits, any magnitude); n/a when NaN."""
    if mean is None or std is None or not (math.isfinite(mean) and math.isfinite(std)):
        return NA
    return f"{mean:.3g} ± {std:.2g} {symbol}"


def format_minutes(mean: float, std: float) -> str:
    """``"118.20 ± 1.50"``; short runs keep 4 decimals (``"0.0123 ± 0.0004"``); n/a when NaN."""
    if math.isnan(mean) or math.isnan(std):
        return NA
    decimals = 2 if abs(mean) >= 0.1 or mean == 0 else 4
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


_MAC_UNITS = [("EMAC", 1e18), ("PMAC", 1e15), ("TMAC", 1e12), ("GMAC", 1e9), ("MMAC", 1e6),
              ("kMAC", 1e3)]


def format_macs(macs: float) -> str:
    """``1.23e15`` -> ``"1.23 PMAC"``; ``0`` -> ``"0 MAC"``; n/a when NaN."""
    if macs is None or math.isnan(macs):
        return NA
    for unit, scale in _MAC_UNITS:
        if abs(macs) >= scale:
            return f"{macs / scale:.3g} {unit}"
    return f"{macs:.3g} MAC"


def format_ratio(ratio: float) -> str:
    """``"0.12"``; very small ratios in scientific notation (``"3.1e-03"``); n/a when NaN/inf."""
    if ratio is None or not math.isfinite(ratio):
        return NA
    return f"{ratio:.2f}" if ratio == 0 or abs(ratio) >= 0.01 else f"{ratio:.1e}"


def format_percent(value: float) -> str:
    """``"99.8"``; n/a when NaN/None."""
    if value is None or not math.isfinite(value):
        return NA
    return f"{value:.1f}"


def format_speedup(ratio: float) -> str:
    """``"2.00x"``; n/a when NaN/inf."""
    if ratio is None or not math.isfinite(ratio):
        return NA
    return f"{ratio:.2f}x"


def format_bytes(n: float) -> str:
    """``4000`` -> ``"4.0 kB"``, ``2.5e6`` -> ``"2.50 MB"`` (decimal: 1 kB = 1000 bytes); n/a when
    NaN."""
    if n is None or not math.isfinite(n):
        return NA
    return f"{n / 1e6:.2f} MB" if abs(n) >= 1e6 else f"{n / 1e3:.1f} kB"


def format_count(n: float) -> str:
    """``11173962`` -> ``"11,173,962"`` (a mean over seeds is rounded); n/a when NaN."""
    if n is None or not math.isfinite(n):
        return NA
    return f"{round(n):,}"


# ----------------------------------------------------------------------------- LaTeX

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}", FLAG_MARK: r"$^{\dagger}$"}


def latex_escape(text) -> str:
    """Plain text safe inside LaTeX (``fashion_mnist`` -> ``fashion\\_mnist``)."""
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(text))


def latex_model_label(label: str) -> str:
    """``T_ad(f_st^q) (PTQ)`` -> ``$\\mathcal{T}_{ad}(f_{st}^{q})$ (PTQ)``; a label that is not
    in the paper's notation is escaped as plain text."""
    return math_notation(label) or latex_escape(label)
