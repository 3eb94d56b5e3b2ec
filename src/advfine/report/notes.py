"""The notes (legends) under the tables of ``render``: what each cell means, in Markdown and LaTeX."""
from __future__ import annotations

import math

import pandas as pd

from ..health import CONSTANT_SHARE
from .labels import FLAG_MARK, latex_escape
from .stats import joined

# The legend of the health marks (labels.health_text), under every table that shows accuracies.
HEALTH_NOTE = ("diverged (k/n) = k of n seeds diverged (non-finite weights or logits) and are not scored; "
               "collapsed (k/n) = k of n seeds whose model, or a model it was built from, was trained into a "
               "(near-)constant classifier (at chance accuracy and a loss of ln C on clean training images, or "
               f"one class taking at least {CONSTANT_SHARE:.0%} of the predictions): evaluated, but never "
               "averaged or compared. A compressed model without fine-tuning that predicts one class is a "
               "measurement and is averaged.")
NOTE = ("Accuracy in %, mean ± sample std (ddof=1) over seeds; n = number of seeds "
        "(std 0.00 when n = 1); n/a = no data for that combination. Robustness: per-sample worst "
        f"case over the evaluation's attack suite. {FLAG_MARK} = the evaluation audit flagged a sign "
        "of a failed attack on at least one seed (see evaluation_audit). " + HEALTH_NOTE)
TEX_NOTE = (r"Accuracy in \%, mean $\pm$ sample std (ddof=1) over seeds; $n$ = number of seeds "
            r"(std 0.00 when $n = 1$); n/a = no data for that combination. Robustness: per-sample "
            r"worst case over the evaluation's attack suite. $^{\dagger}$ = the evaluation audit "
            r"flagged a sign of a failed attack on at least one seed (see evaluation\_audit). "
            + latex_escape(HEALTH_NOTE))
AUDIT_NOTE = ("Clean, PGD (the paper's attack) and worst case (per-sample, over the whole suite) in %, "
              "mean ± sample std over the seeds that neither diverged nor collapsed (n: all seeds, those "
              "left out in brackets); gap = PGD minus worst case "
              "(points); decisive attack = the attack after PGD that broke the most samples. Checks, "
              "mean over seeds in % of the test set (flagged seeds in brackets): gradient-free gain = "
              "samples only the transfer or black-box attack broke; large-eps standing = samples "
              "APGD-CE leaves at a large radius; more-effort gain = samples broken by APGD-CE with "
              "more steps and restarts after the suite; zero gradients = clean-correct samples with "
              "an all-zero input gradient. INT8 robust = the deployed integer model under the "
              "transfer and Square attacks. " + HEALTH_NOTE)
GAINS_NOTE = ("Wall times in minutes, mean ± sample std over seeds; MACs: mean over seeds of the "
              "estimated multiply-accumulates recorded for each stage; ratios: ratio of means to "
              "f_rb's; n/a = no data (or an eval.json written before MACs were recorded).")
TEX_GAINS_NOTE = (r"Wall times in minutes, mean $\pm$ sample std over seeds; MACs: mean over "
                  r"seeds of the estimated multiply-accumulates recorded for each stage; "
                  r"ratio: ratio of means to $f_{rb}$'s; n/a = no data.")


def compute_notes(df: pd.DataFrame) -> tuple[str, str]:
    """The compute table's Markdown and LaTeX notes, with the recorded batch size and threads."""
    batch = joined(df["latency_batch"]) if "latency_batch" in df and len(df) else math.nan
    threads = joined(df["latency_threads"]) if "latency_threads" in df and len(df) else math.nan
    batch = "256" if isinstance(batch, float) else batch
    threads = "" if isinstance(threads, float) else f" ({threads})"
    md = (f"Latency: median of timed forward passes of a batch of {batch} test images on the CPU "
          f"with the job's threads{threads}, in ms, mean ± sample std over seeds; speed-up: ratio "
          "of means, the dense model of the same base training without fine-tuning (f_st or f_rb) "
          "to this model (so f_st and f_rb are 1.00x). Fake-quantized models (^q, PTQ and QAT) run "
          "as fp32 with rounding, so they are not faster; the real INT8 model is torch.ao's (oneDNN) "
          "integer model of the PTQ INT8 node (n/a elsewhere), converted from the fake-quant model "
          "(same scales), its clean accuracy (%) beside the fake-quant model's and the share of test "
          "predictions on which both agree (the lowest over seeds). Params and MACs per input: mean over seeds; weights: bytes of the "
          "stored weights, checkpoint: file size (kB = 1000 bytes, MB = 10^6 bytes). Whole "
          "lineage: wall time in minutes (mean ± std) and estimated MACs (mean) of every stage "
          "that produced the model (training + compression + fine-tuning). Peak memory: peak "
          "resident set size of the job process, the maximum over the lineage's stages and the "
          "evaluation, in MB (mean ± std). Evaluation: seconds of the attack suite, the audit and the "
          "robustness curve (mean ± std); n/a = no data (or an eval.json written before it was "
          "recorded).")
    tex = (rf"Latency: median of timed forward passes of a batch of {batch} test images on the "
           rf"CPU with the job's threads{latex_escape(threads)}, in ms, mean $\pm$ sample std over "
           r"seeds; speed-up: ratio of means, the dense model of the same base training without "
           r"fine-tuning ($f_{st}$ or $f_{rb}$) to this model. Fake-quantized models ($f^q$, PTQ "
           r"and QAT) run as fp32 with rounding, so they are not faster; the real INT8 model is "
           r"torch.ao's (oneDNN) integer model of the PTQ INT8 node (n/a elsewhere), converted from "
           r"the fake-quant model (same scales), its clean accuracy (\%) beside the fake-quant "
           r"model's and the share of test predictions on which both agree (the lowest over seeds). "
           r"Sizes: kB = 1000 bytes, MB = $10^6$ "
           r"bytes. Whole lineage: wall time in minutes (mean $\pm$ std) and estimated MACs "
           r"(mean) of every stage that produced the model. Peak memory: peak resident set size "
           r"of the job process, the maximum over the lineage's stages and the evaluation, in MB "
           r"(mean $\pm$ std). Evaluation: seconds of the attack suite, the audit and the robustness "
           r"curve; n/a = no data.")
    return md, tex
